"""How the web and a serving process talk: Redis lists and keys, one set per served model.

- ``requests(model)``: a list the web pushes each request onto (JSON: id, its reply list, the
  messages or prompt, the sampling settings, a deadline); the serving process pops them.
- ``reply(request_id)``: a list per request the serving process pushes onto, in order: one
  ``accepted`` (the prompt's token count) or one ``error`` (status and message), then ``token``
  messages (one a step, a choice's new text with its ids and log-probabilities), then ``done``
  per choice (finish reason, counts). A list rather than a channel: nothing is lost when the web
  reads it a moment late; it expires when nobody reads it.
- ``aborts(model)``: request ids whose clients went away or timed out; their sequences end at the
  next step and their KV blocks are freed.
- ``control(model)``: changes to apply while it runs, such as the batching policy a load test
  compares (``{"policy": "static"}`` or ``"continuous"``).
- ``alive(model)``: the serving process's heartbeat, with its live figures (batch, KV blocks,
  queue, tokens/s, latency histograms) as JSON; it expires ``ALIVE_TTL_S`` after the last beat,
  which is how the web tells that the process died (its waiting clients then get an error,
  never a hang) and what ``GET /v1/models`` lists.
- ``inflight(model)``: requests the web has admitted and not finished, for the bounded queue.

Keys carry the channel layer's prefix, so a test session's keys never meet another run's.
"""
import json

from django.conf import settings

ALIVE_TTL_S = 3.0  # a serving process beats at least every second while it is up
REPLY_TTL_S = 120  # a reply list nobody reads any more is dropped


def _prefix():
    return settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "asgi") + ":serve"


def requests(model):
    return f"{_prefix()}:{model}:requests"


def aborts(model):
    return f"{_prefix()}:{model}:aborts"


def control(model):
    """Settings changed while it runs (JSON: ``{"policy": "static"}``), read at the next step."""
    return f"{_prefix()}:{model}:control"


def alive(model):
    return f"{_prefix()}:{model}:alive"


def alive_pattern():
    return f"{_prefix()}:*:alive"


def model_of_alive_key(key):
    return key.decode()[len(_prefix()) + 1:-len(":alive")]


def inflight(model):
    return f"{_prefix()}:{model}:inflight"


def refusals(model):
    """When the web last answered 429 for ``model`` (the Serving page's recent refusals)."""
    return f"{_prefix()}:{model}:refusals"


def reply(request_id):
    return f"{_prefix()}:reply:{request_id}"


def team_tokens(team_id, minute):
    return f"{_prefix()}:tpm:{team_id}:{minute}"


def pack(message):
    return json.dumps(message, separators=(",", ":"))


def unpack(raw):
    return json.loads(raw)


def sync_client():
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)


def async_client():
    import redis.asyncio

    return redis.asyncio.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=2)
