"""The production web command (README, Dockerfile, docker-compose.yml): gunicorn supervising
WEB_CONCURRENCY uvicorn workers serves pages, the API and a job's websocket, with as many worker
processes as asked."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from explorer.training import jobs as training_jobs
from tests.conftest import TINY_SPEC, make_user
from tests.stack import ROOT, Stack, free_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def children(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return path.read_text().split() if path.exists() else []


def test_gunicorn_with_uvicorn_workers_serves_pages_api_and_websockets(tmp_path, session_cookie):
    user, team = make_user("gus")
    job = training_jobs.create_job(user, team, TINY_SPEC, name="served by gunicorn")  # queued: no worker here
    port = free_port()
    env = {**Stack(tmp_path).env, "WEB_CONCURRENCY": "2"}
    cmd = [sys.executable, "-m", "gunicorn", "config.asgi:application", "-k", "uvicorn_worker.UvicornWorker",
           "--bind", f"127.0.0.1:{port}"]
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while len(children(proc.pid)) < 2 or not _up(url):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.2)
        assert len(children(proc.pid)) == 2  # WEB_CONCURRENCY worker processes under one master
        cookie = session_cookie(user)
        headers = {"Cookie": cookie}
        for _ in range(6):  # whichever worker answers
            assert httpx.get(f"{url}/jobs/{job.pk}/", headers=headers).status_code == 200
            resp = httpx.get(f"{url}/api/v1/jobs/{job.pk}", headers=headers)
            assert resp.status_code == 200 and resp.json()["name"] == "served by gunicorn"

        async def first_message():
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/jobs/{job.pk}/",
                                          additional_headers={"Cookie": cookie, "Origin": url}) as ws:
                return json.loads(await asyncio.wait_for(ws.recv(), 10))

        message = asyncio.run(first_message())
        assert message["type"] == "job" and message["job"]["name"] == "served by gunicorn", message
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _up(url):
    try:
        return httpx.get(url + "/login/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
