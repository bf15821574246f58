"""Sending to the channel layer without making the caller wait.

``async_to_sync(layer.group_send)`` from a worker's training thread starts a thread, an event
loop and a Redis connection for every call and tears them down again (asgiref 3.13, channels_redis
4.3): several milliseconds per flush, paid by the training step (``bench/instrumentation_overhead.py``).
Instead each process keeps one publisher: a daemon thread with its own event loop and its own
channel-layer instance (so it shares no asyncio state with an ASGI server's loop), fed through a
queue. ``send(pairs)`` returns at once; the pairs go out in submission order, one batch after the
other, so a job's events never overtake each other. A send that fails is logged and dropped: the
events are in the database and clients catch up from there on reconnect.

Forked processes (Celery's prefork pool) get their own publisher on first use.
"""
import asyncio
import logging
import os
import threading

from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self):
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.pending = 0  # batches submitted and not yet sent
        self.idle = threading.Condition()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True, name="channel-publisher")
        self.thread.start()
        started.wait(10)

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        self.queue = asyncio.Queue()
        self.loop.call_soon(started.set)
        self.loop.run_until_complete(self._send_forever())

    async def _send_forever(self):
        layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)  # this loop's own connections
        while True:
            pairs = await self.queue.get()
            for group, message in pairs:
                try:
                    await layer.group_send(group, message)
                except Exception:  # noqa: BLE001 - saved events reach clients from the log
                    log.warning("could not send a %s message to %s", message.get("type"), group, exc_info=True)
            with self.idle:
                self.pending -= 1
                self.idle.notify_all()

    def send(self, pairs):
        """Queue ``[(group, message), ...]`` to be sent in order; returns at once."""
        with self.idle:
            self.pending += 1
        self.loop.call_soon_threadsafe(self.queue.put_nowait, list(pairs))

    def wait(self, timeout=5.0):
        """Block until everything submitted so far is sent (or ``timeout``); returns whether it was."""
        with self.idle:
            return self.idle.wait_for(lambda: self.pending == 0, timeout)


_publisher = None
_lock = threading.Lock()


def publisher():
    """This process's publisher, started on first use (again after a fork)."""
    global _publisher
    with _lock:
        if _publisher is None or _publisher.pid != os.getpid() or not _publisher.thread.is_alive():
            _publisher = Publisher()
        return _publisher
