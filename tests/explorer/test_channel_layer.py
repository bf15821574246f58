"""The channel layer the app is configured with (settings.CHANNEL_LAYERS), on a real Redis of the
test's own: a group's messages reach its member, and reach it again after Redis restarts without
the member doing anything (the ASGI server's subscriptions come back by themselves; what was
published while Redis was down is read from the job's log by the consumer)."""
import asyncio
import time

from django.conf import settings
from django.utils.module_loading import import_string

from explorer.embedded_redis import EmbeddedRedis


def make_layer(url):
    conf = settings.CHANNEL_LAYERS["default"]
    return import_string(conf["BACKEND"])(**{**conf.get("CONFIG", {}), "hosts": [url], "prefix": "layertest"})


def test_a_group_member_hears_again_after_redis_restarts(tmp_path):
    redis = EmbeddedRedis(tmp_path, persist=False)
    url = redis.start()

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

    try:
        asyncio.run(scenario())
    finally:
        redis.stop()
