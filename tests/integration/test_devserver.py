"""`make run`'s supervisor on a bare machine: no REDIS_URL, so it starts the embedded Redis, migrates
a fresh SQLite database, creates the demo login, and serves the app with a working worker."""
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.stack import ROOT, free_port

pytestmark = pytest.mark.integration


def test_make_run_serves_the_app_with_embedded_redis_and_a_worker(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(EXPLORER_VAR_DIR=str(tmp_path / "var"), EXPLORER_DEMO_PASSWORD="demo-pass-123", PYTHONUNBUFFERED="1")
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "explorer.devserver", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while b"is running at" not in (tmp_path / "run.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.3)
        out = (tmp_path / "run.log").read_text()
        assert f"running at {url}" in out and "'demo'" in out and "demo-pass-123" in out
        assert "embedded Redis on unix://" in out
        with httpx.Client(base_url=url, timeout=30) as http:
            http.get("/login/")
            token = http.cookies["csrftoken"]
            resp = http.post("/login/", data={"username": "demo", "password": "demo-pass-123", "csrfmiddlewaretoken": token})
            assert resp.status_code == 302
            spec = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
                    "data": {"source": "synthetic", "task": "reverse", "task_length": 4},
                    "train": {"steps": 20, "batch_size": 8, "eval_interval": 10, "eval_iters": 1, "warmup_steps": 2}}
            resp = http.post("/api/v1/jobs", json=spec, headers={"X-CSRFToken": http.cookies["csrftoken"], "Referer": url})
            assert resp.status_code == 201, resp.text
            job_id = resp.json()["id"]
            while True:
                job = http.get(f"/api/v1/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                assert time.monotonic() < deadline + 60, job
                time.sleep(0.5)
            assert job["status"] == "succeeded", job["error"]
            assert job["worker"].startswith("cpu@") and job["step"] == 20
            if "Serving: smollm2-135m-instruct" in out:  # (the wheel installed: make test installs it)
                while b"KV blocks of" not in (tmp_path / "run.log").read_bytes():
                    assert time.monotonic() < deadline + 120, (tmp_path / "run.log").read_text()[-3000:]
                    time.sleep(0.5)
                workers = http.get("/api/v1/workers").json()["workers"]
                assert any(w["name"].startswith("serve-smollm2-135m-instruct@") and w["status"] == "online"
                           for w in workers), workers
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
    assert "stopping" in (tmp_path / "run.log").read_text()
    assert not (tmp_path / "var" / "redis" / "redis.sock").exists() or proc.returncode is not None
