"""Two test runs on one machine do not share a Redis: without REDIS_URL, each session's
``config.settings.test`` starts a private embedded server on a unix socket (as ``make run`` does) and
stops it when the session ends. Two runs of tests/integration/test_worker_registry.py at once
used to share database 14 of the machine's Redis, and each took the other's Celery messages."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from explorer.embedded_redis import ping_unix

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SESSION = """
import os, sys
import config.settings.test  # what pytest-django imports first in a test session
print(os.environ["REDIS_URL"], flush=True)
sys.stdin.readline()  # hold the session open until the test has looked
"""


def start_session():
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "EXPLORER_VAR_DIR", "EXPLORER_CHANNEL_PREFIX")}
    return subprocess.Popen([sys.executable, "-c", SESSION], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def test_each_test_session_gets_its_own_redis_and_stops_it():
    sessions = [start_session(), start_session()]
    try:
        urls = [s.stdout.readline().strip() for s in sessions]
        assert all(url.startswith("unix://") for url in urls), urls
        assert len({*urls, os.environ["REDIS_URL"]}) == 3  # two servers, neither this session's
        first, second = (redis.Redis.from_url(url) for url in urls)
        first.rpush("cpu", "a message for the first run's worker")
        assert first.llen("cpu") == 1 and second.llen("cpu") == 0
    finally:
        for s in sessions:
            s.communicate("\n", timeout=30)
    sockets = [url.removeprefix("unix://") for url in urls]
    assert not any(ping_unix(path) or Path(path).exists() for path in sockets)  # stopped, cleaned up
