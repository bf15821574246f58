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
    for service in ("web:", "worker-cpu:", "worker-gpu:", "beat:", "redis:", "postgres:"):
        assert service in result.stdout
    assert "driver: nvidia" in result.stdout and "REDIS_URL: redis://redis:6379/0" in result.stdout
    # the web: gunicorn supervising WEB_CONCURRENCY uvicorn worker processes, not one interpreter
    web = result.stdout.split("\n  web:", 1)[1].split("\n  worker-", 1)[0]
    assert "gunicorn config.asgi:application" in web and "-k uvicorn.workers.UvicornWorker" in web
    assert "WEB_CONCURRENCY: '4'" in web


def test_the_image_serves_with_gunicorn_and_uvicorn_workers():
    cmd = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD")]
    assert cmd == ['CMD ["gunicorn", "config.asgi:application", "-k", "uvicorn.workers.UvicornWorker", '
                   '"--bind", "0.0.0.0:8000"]']
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
