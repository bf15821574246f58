"""Test settings: the app's settings, pointed at a throw-away var/ dir and a real Redis.

Redis: REDIS_URL when set; else the local server on 127.0.0.1:6379 (database 14, away from a dev
app on database 0) when it answers; else an embedded one started for this test run. Never a fake.
Subprocesses started by the integration tests get the same environment.
"""
import atexit
import os
import tempfile

os.environ.setdefault("EXPLORER_VAR_DIR", tempfile.mkdtemp(prefix="lae-test-"))
os.environ.setdefault("EXPLORER_CHANNEL_PREFIX", f"test{os.getpid()}")
# Rate limits off: the suite logs in and submits far more than a person would, and user ids are
# reused from test to test; tests/explorer/test_ratelimit.py turns them on with its own key prefix.
os.environ.setdefault("EXPLORER_RATELIMIT_LOGIN", "0")
os.environ.setdefault("EXPLORER_RATELIMIT_JOBS", "0")
if not os.environ.get("REDIS_URL"):
    from explorer.embedded_redis import EmbeddedRedis, ping_tcp

    if ping_tcp("127.0.0.1", 6379):
        os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/14"
    else:
        _redis = EmbeddedRedis(os.environ["EXPLORER_VAR_DIR"], persist=False)
        os.environ["REDIS_URL"] = _redis.start()
        atexit.register(_redis.stop)

from config.settings.base import *  # noqa: E402,F401,F403

# Fast password hashing in tests (the test stack's subprocesses use these settings too).
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
