"""A real stack for integration and browser tests: a Celery worker and an ASGI server (uvicorn) started as
subprocesses on free ports, against the real Redis and the test database."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(settings_dict):
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or ""
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{settings_dict.get('HOST') or '127.0.0.1'}:{settings_dict.get('PORT') or 5432}/{settings_dict['NAME']}"


class Stack:
    def __init__(self, tmp):
        from django.db import connection

        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="config.settings.test",
            DATABASE_URL=database_url(connection.settings_dict),
            PYTHONUNBUFFERED="1",
        )
        self.procs = {}
        self.worker_name = f"itest{os.getpid()}@localhost"

    def start_worker(self):
        path = self.tmp / "worker.log"
        offset = path.stat().st_size if path.exists() else 0  # a restart appends to the same log
        log = open(path, "ab")
        cmd = [sys.executable, "-m", "celery", "-A", "config.celery_app", "worker", "-Q", "cpu", "-c", "1", "-n", self.worker_name,
               "-l", "info", "--without-mingle", "--without-gossip"]
        self.procs["worker"] = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        self._wait(lambda: b"ready." in path.read_bytes()[offset:], "worker", 60)

    def start_serving(self, model, *args, **env):
        """``manage.py serve <model> *args`` (e.g. ``"--policy", "static"``), a serving process, with
        ``env`` (``EXPLORER_SERVING_*`` settings) on top; ready once its heartbeat is in Redis. A
        "job-<id>" model is served with ``--job <id>`` in ``args``."""
        from explorer.serving import bus

        path = self.tmp / "serving.log"
        offset = path.stat().st_size if path.exists() else 0
        log = open(path, "ab")
        command = [sys.executable, "manage.py", "serve", *([model] if not model.startswith("job-") else []), *args]
        self.procs["serving"] = subprocess.Popen(command, cwd=ROOT,
                                                 env={**self.env, **{k: str(v) for k, v in env.items()}},
                                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = bus.sync_client()
        self._wait(lambda: client.exists(bus.alive(model)) and b"serving" in path.read_bytes()[offset:],
                   "serving", 120)

    def stop_one(self, name, sig=None):
        """Stop one process (SIGTERM, or ``sig``) and wait for it."""
        import signal

        proc = self.procs[name]
        os.killpg(proc.pid, sig or signal.SIGTERM)
        proc.wait(30)

    def start_web(self, workers=1):
        """One uvicorn process; with ``workers`` > 1 the production command instead (gunicorn
        supervising that many uvicorn worker processes, as README and docker-compose.yml run it)."""
        log = open(self.tmp / "web.log", "ab")
        cmd = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "warning"]
        if workers > 1:
            cmd = [sys.executable, "-m", "gunicorn", "config.asgi:application", "-k", "uvicorn_worker.UvicornWorker",
                   "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers), "--log-level", "warning"]
        self.procs["web"] = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)

        def up():
            try:
                return httpx.get(self.url + "/login/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        self._wait(up, "web", 30)

    def _wait(self, ready, name, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not start:\n{self.log(name)}")

    def log(self, name):
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self):
        import signal

        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


