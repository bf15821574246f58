"""Test settings: the app's settings, pointed at a throw-away var/ dir and a real Redis.

Redis: REDIS_URL when set (then it is this run's alone: another run on the same server and
database would take its Celery messages); else a private embedded server on a unix socket, started
for this test session (as ``make run`` starts one) and stopped when it ends, so two test runs on
one machine never share queues, keys or pub/sub channels. Never a fake. Subprocesses started by
the integration tests inherit REDIS_URL with the environment, so they use the same server.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("EXPLORER_VAR_DIR", tempfile.mkdtemp(prefix="lae-test-"))
os.environ.setdefault("EXPLORER_CHANNEL_PREFIX", f"test{os.getpid()}")
# Rate limits off: the suite logs in and submits far more than a person would, and user ids are
# reused from test to test; tests/explorer/test_ratelimit.py turns them on with its own key prefix.
os.environ.setdefault("EXPLORER_RATELIMIT_LOGIN", "0")
os.environ.setdefault("EXPLORER_RATELIMIT_JOBS", "0")
if not os.environ.get("REDIS_URL"):
    from explorer.embedded_redis import EmbeddedRedis

    # its own directory, not EXPLORER_VAR_DIR's (which a caller may share between runs)
    _redis_dir = tempfile.mkdtemp(prefix="lae-test-redis-")
    _redis = EmbeddedRedis(_redis_dir, persist=False)
    os.environ["REDIS_URL"] = _redis.start()

    @atexit.register
    def _stop_redis():
        _redis.stop()
        shutil.rmtree(_redis_dir, ignore_errors=True)

from config.settings.base import *  # noqa: E402,F401,F403

# Fast password hashing in tests (the test stack's subprocesses use these settings too).
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
