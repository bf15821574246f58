"""The channel layer the app is configured with (settings.CHANNEL_LAYERS), on a real Redis of the
test's own: a group's messages reach its member, and reach it again after Redis restarts without
the member doing anything (the ASGI server's subscriptions come back by themselves; what was
published while Redis was down is read from the job's log by the consumer)."""
import asyncio
import time

import pytest
from django.conf import settings
from django.utils.module_loading import import_string

from explorer.embedded_redis import EmbeddedRedis


@pytest.fixture
def redis(tmp_path):
    """A Redis of the test's own, which it may stop and start."""
    server = EmbeddedRedis(tmp_path, persist=False)
    server.start()
    yield server
    server.stop()


def make_layer(url, prefix="layertest"):
    conf = settings.CHANNEL_LAYERS["default"]
    return import_string(conf["BACKEND"])(**{**conf.get("CONFIG", {}), "hosts": [url], "prefix": prefix})


def test_a_group_member_hears_again_after_redis_restarts(redis):
    url = redis.url

    async def scenario():
        watcher, sender = make_layer(url), make_layer(url)  # the ASGI server's and a worker's
        channel = await watcher.new_channel()
        await watcher.group_add("job.1", channel)
        await sender.group_send("job.1", {"type": "job.events", "n": 1})
        assert (await asyncio.wait_for(watcher.receive(channel), 5))["n"] == 1

        waiting = asyncio.ensure_future(watcher.receive(channel))  # the consumer waits throughout
        redis.stop()
        await asyncio.sleep(1)
        redis.start()
        deadline, n = time.monotonic() + 20, 1
        while not waiting.done():
            assert time.monotonic() < deadline, "the member never heard the group again after the restart"
            n += 1
            try:
                await sender.group_send("job.1", {"type": "job.events", "n": n})
            except Exception:  # noqa: BLE001 - the sender's own connection may need a try to come back
                pass
            await asyncio.sleep(0.1)
        assert waiting.result()["n"] > 1
        await watcher.flush()
        await sender.flush()

    asyncio.run(scenario())


def test_the_prefix_keeps_apps_on_different_redis_databases_apart(redis):
    """Pub/sub channels are server-wide: without the database's number in the prefix, an app on
    database 1 would hear the jobs of an app on database 2 of the same server."""
    from config.settings.base import redis_db

    assert [redis_db(u) for u in ("redis://h:6379/0", "redis://h:6379/14", "redis://h", "unix:///r.sock",
                                  "unix:///r.sock?db=3", "rediss://u:p@h:1/5")] == [0, 14, 0, 0, 3, 5]

    def layer(db):  # an app on database ``db``, with the prefix the settings give it
        return make_layer(redis.url, prefix=f"asgi{redis_db(f'redis://h/{db}')}")

    async def scenario():
        one, other, sender = layer(1), layer(2), layer(1)
        mine, theirs = await one.new_channel(), await other.new_channel()
        await one.group_add("job.7", mine)
        await other.group_add("job.7", theirs)
        await sender.group_send("job.7", {"type": "job.events", "n": 1})
        assert (await asyncio.wait_for(one.receive(mine), 5))["n"] == 1
        try:
            await asyncio.wait_for(other.receive(theirs), 0.5)
            raise AssertionError("an app on another database heard the job")
        except TimeoutError:
            pass
        for each in (one, other, sender):
            await each.flush()

    asyncio.run(scenario())
