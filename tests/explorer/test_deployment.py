"""The team deployment file is valid for docker-compose (no Docker engine runs here)."""
import shutil
import subprocess

import pytest

from tests.stack import ROOT


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (make system-deps)")
def test_docker_compose_file_is_valid():
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "DJANGO_SECRET_KEY": "x" * 50, "POSTGRES_PASSWORD": "pw"}
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"], env=env,
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for service in ("web:", "worker-cpu:", "worker-gpu:", "serving:", "beat:", "redis:", "postgres:"):
        assert service in result.stdout
    assert "python manage.py serve smollm2-135m-instruct" in result.stdout
    assert "driver: nvidia" in result.stdout and "REDIS_URL: redis://redis:6379/0" in result.stdout
    # the web: gunicorn supervising WEB_CONCURRENCY uvicorn worker processes, not one interpreter
    web = result.stdout.split("\n  web:", 1)[1].split("\n  worker-", 1)[0]
    assert "gunicorn config.asgi:application" in web and "-k uvicorn_worker.UvicornWorker" in web
    assert "WEB_CONCURRENCY: '4'" in web and "DATABASE_POOL_SIZE: '8'" in web


def test_the_image_serves_with_gunicorn_and_uvicorn_workers():
    cmd = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD")]
    assert cmd == ['CMD ["gunicorn", "config.asgi:application", "-k", "uvicorn_worker.UvicornWorker", '
                   '"--bind", "0.0.0.0:8000"]']
    assert '"uvicorn-worker>=' in (ROOT / "pyproject.toml").read_text()
    assert '"gunicorn>=' in (ROOT / "pyproject.toml").read_text()  # installed with the app


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (make system-deps)")
def test_docker_compose_refuses_to_start_without_secrets():
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                            env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and "DJANGO_SECRET_KEY" in result.stderr


def _settings_in_a_fresh_process(env):
    import os
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "EXPLORER_PRODUCTION"))}
    return subprocess.run([sys.executable, "-c", "import config.settings.local as s; print(len(s.SECRET_KEY))"],
                          env={**base, **env}, capture_output=True, text=True, cwd=ROOT)


def test_production_mode_refuses_to_start_without_a_secret_key():
    refused = _settings_in_a_fresh_process({"EXPLORER_PRODUCTION": "1"})
    assert refused.returncode != 0 and "DJANGO_SECRET_KEY must be set when EXPLORER_PRODUCTION=1" in refused.stderr
    started = _settings_in_a_fresh_process({"EXPLORER_PRODUCTION": "1", "DJANGO_SECRET_KEY": "k" * 50})
    assert started.returncode == 0 and started.stdout.strip() == "50"
    local = _settings_in_a_fresh_process({})  # local use: a random key kept under var/
    assert local.returncode == 0 and int(local.stdout) >= 50


POOLED_QUERY = """
import django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
django.setup()
from django.db import connection
print(connection.settings_dict["OPTIONS"].get("pool"))
for _ in range(3):  # each time a connection from the pool, given back on close
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    connection.close()
print(type(connection.pool).__name__, connection.pool.max_size)
"""


def test_postgresql_connections_come_from_a_pool_when_asked():
    import os
    import sys

    import psycopg

    url = os.environ.get("TEST_DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/test"
    try:
        psycopg.connect(url.replace("postgres://", "postgresql://"), connect_timeout=3).close()
    except psycopg.OperationalError:
        pytest.skip(f"no PostgreSQL at {url}")
    base = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    run = subprocess.run([sys.executable, "-c", POOLED_QUERY], env={**base, "DATABASE_URL": url, "DATABASE_POOL_SIZE": "4"},
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["{'min_size': 1, 'max_size': 4, 'timeout': 30}", "ConnectionPool 4"]
    # a bad size is refused where it is set, with the reason
    bad = _settings_in_a_fresh_process({"DATABASE_URL": url, "DATABASE_POOL_SIZE": "many"})
    assert bad.returncode != 0 and "DATABASE_POOL_SIZE must be a whole number, not 'many'" in bad.stderr
