"""The OpenAI-compatible endpoint: ``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /v1/models`` (and ``/v1/models/<id>``), for the official ``openai`` client and anything
that speaks its protocol.

Async views: a request waits on Redis for its tokens (``explorer.serving.bus``), holding no
thread. Authentication is a personal API token as ``Authorization: Bearer lae_...`` only (no
session cookie, so no CSRF to check). Before a request is handed to the serving process it
passes, in order: the body's checks (400 naming the field), the model being served (404), the
team's tokens-per-minute (429), and the bounded queue (429 with ``Retry-After``). Errors come in
OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``. A client that goes away
aborts its sequences (their KV blocks are freed at the serving process's next step); a
serving process that dies is noticed within ``bus.ALIVE_TTL_S`` and the client gets a 503 (or,
mid-stream, an error event), never a hang.
"""
import asyncio
import json
import logging
import math
import time
import uuid

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from explorer.accounts.models import ApiToken
from explorer.serving import bus

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_N = 8
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
CHARS_PER_TOKEN = 4  # the tokens-per-minute check's estimate of a prompt before it is tokenized


class ApiError(Exception):
    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             405: "invalid_request_error", 429: "rate_limit_error"}

    def __init__(self, status, message, param=None, code=None, retry_after=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after

    def body(self):
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self):
        response = JsonResponse(self.body(), status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(self.retry_after)
        return response


def _setting(name, default):
    return getattr(settings, name, default)


def openai_view(method):
    """An async view answering errors (any, even unexpected) in OpenAI's shape, CSRF-exempt as it
    takes no cookie."""
    def wrap(view):
        async def handler(request, *args, **kwargs):
            try:
                if request.method != method:
                    raise ApiError(405, f"{request.method} is not allowed here; use {method}")
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()
            except Exception:  # e.g. Redis down: an answer in the client's shape, never a bare 500
                log.exception("OpenAI endpoint %s failed", request.path)
                return ApiError(503, "The serving backend is unavailable right now; try again shortly.",
                                code="service_unavailable").response()
        handler.__name__ = view.__name__
        handler.__doc__ = view.__doc__
        return csrf_exempt(handler)
    return wrap


async def authenticate(request):
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise ApiError(401, "You didn't provide an API key. Send your personal API token (from the Account page) "
                            "as 'Authorization: Bearer lae_...'.", code="missing_api_key")
    user = await sync_to_async(ApiToken.authenticate)(header[7:].strip())
    if user is None:
        raise ApiError(401, "Incorrect API key provided (unknown or revoked). Make a new one on the Account page.",
                       code="invalid_api_key")
    from explorer.accounts.teams import user_teams

    teams = await sync_to_async(lambda: [t.pk for t in user_teams(user)])()  # (a token's team only)
    team = getattr(user, "token_team_id", None) or (teams[0] if teams else None)
    return team, set(teams)


def visible(figures, teams):
    """A pretrained model is everyone's; a team's checkpoint only its members'."""
    return figures.get("team") is None or figures["team"] in teams


# ---------------------------------------------------------------------- reading the body
def _body(request):
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"We could not parse the JSON body of your request ({exc}). Send a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.")
    return body


def _number(body, name, lo, hi, default, integer=False):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise ApiError(400, f"'{name}' must be {'an integer' if integer else 'a number'}; got {value!r}", param=name)
    if not (lo <= value <= hi) or (isinstance(value, float) and not math.isfinite(value)):
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}; got {value}", param=name)
    return int(value) if integer else float(value)


def _flag(body, name):
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false; got {value!r}", param=name)
    return value


def _text(content, where):
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"'{where}' must be a string or a list of text parts", param=where)


def _messages(body):
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content}", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES + ("developer",):
            raise ApiError(400, f"'messages.[{i}].role' must be one of {', '.join(ROLES)}", param=f"messages.[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _text(m.get("content"), f"messages.[{i}].content")})
    return out


def _prompt(body):
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string (one prompt a request)", param="prompt")
    if not prompt:
        raise ApiError(400, "'prompt' is empty", param="prompt")
    return prompt


def parse(body, kind):
    """The request the serving process reads, from a checked body; ``ApiError`` (400) otherwise."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required: one of GET /v1/models' ids", param="model")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or len(stop) > MAX_STOP
                             or not all(isinstance(s, str) for s in stop)):
        raise ApiError(400, f"'stop' must be a string or a list of up to {MAX_STOP} strings", param="stop")
    max_name = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"'seed' must be an integer; got {seed!r}", param="seed")
    out = {"kind": kind, "model": model, "max_tokens": _number(body, max_name, 1, 2**31, None, integer=True),
           "temperature": _number(body, "temperature", 0, 2, 1.0), "top_p": _number(body, "top_p", 0, 1, None),
           "n": _number(body, "n", 1, MAX_N, 1, integer=True), "stop": stop or [], "seed": seed,
           "stream": _flag(body, "stream")}
    if out["top_p"] == 0:
        raise ApiError(400, "'top_p' must be above 0", param="top_p")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    out["include_usage"] = bool((options or {}).get("include_usage"))
    if kind == "chat":
        out["messages"] = _messages(body)
        out["logprobs"] = _flag(body, "logprobs")
        out["top_logprobs"] = _number(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, 0, integer=True)
        if out["top_logprobs"] and not out["logprobs"]:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    else:
        out["prompt"] = _prompt(body)
        k = _number(body, "logprobs", 0, 5, None, integer=True)
        out["logprobs"], out["top_logprobs"] = k is not None, k or 0
        if _flag(body, "echo"):
            raise ApiError(400, "'echo' is not supported", param="echo")
    return out


# ---------------------------------------------------------------------- admission
async def served(redis, model):
    """The serving process's live figures for ``model``, or None when none is up."""
    raw = await redis.get(bus.alive(model))
    return bus.unpack(raw) if raw else None


async def admit(redis, req, figures, team, rid):
    """Check the tokens-per-minute and the bounded queue; 429 when either is full."""
    context = figures["context"]
    if req["max_tokens"] is not None and req["max_tokens"] >= context:
        raise ApiError(400, f"'max_tokens' is {req['max_tokens']}, but this model's maximum context length is "
                            f"{context} tokens (prompt and completion together)", param="max_tokens",
                       code="context_length_exceeded")
    now = time.time()
    limit = _setting("SERVING_TEAM_TPM", 0)
    if limit and team is not None:
        chars = len(req["prompt"]) if req["kind"] == "completion" else sum(len(m["content"]) for m in req["messages"])
        estimate = chars // CHARS_PER_TOKEN + 1 + (req["max_tokens"] or 256) * req["n"]
        key = bus.team_tokens(team, int(now // 60))
        used = await redis.incrby(key, estimate)
        await redis.expire(key, 120)
        if used > limit:
            await redis.decrby(key, estimate)
            await refused(redis, req["model"])
            raise ApiError(429, f"Rate limit reached for your team's tokens per minute: limit {limit}, used "
                                f"{used - estimate}, requested about {estimate}. Try again in "
                                f"{60 - int(now % 60)} s.", code="rate_limit_exceeded", retry_after=60 - int(now % 60))
        req["tpm_key"], req["tpm_estimate"] = key, estimate
    bound = figures["max_batch"] + figures["max_queued"]
    timeout = _setting("SERVING_REQUEST_TIMEOUT_S", 300)
    key = bus.inflight(req["model"])
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(key, "-inf", now - timeout - 5)  # left by a web process that died
        pipe.zadd(key, {rid: now})
        pipe.zcard(key)
        pipe.expire(key, int(timeout) + 60)
        count = (await pipe.execute())[2]
    tokens_waiting = figures.get("waiting_tokens", 0)
    max_tokens_waiting = _setting("SERVING_MAX_WAITING_TOKENS", 0)
    if count > bound or (max_tokens_waiting and tokens_waiting > max_tokens_waiting):
        await redis.zrem(key, rid)
        await refused(redis, req["model"])
        rate = figures.get("tokens_per_s") or 0
        wait = max(1, math.ceil(tokens_waiting / rate)) if rate else 1
        raise ApiError(429, f"The server is busy: {count - 1} requests are in flight (at most {bound}: a batch of "
                            f"{figures['max_batch']} and {figures['max_queued']} waiting). Try again shortly.",
                       code="queue_full", retry_after=min(wait, 60))


async def refused(redis, model):
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lpush(bus.refusals(model), time.time()).ltrim(bus.refusals(model), 0, 199)
        await pipe.execute()


async def release(redis, req, rid, usage=None):
    """The request is over: out of the queue's count; the team's minute charged what it used."""
    try:
        await redis.zrem(bus.inflight(req["model"]), rid)
        if usage is not None and req.get("tpm_key"):
            await redis.incrby(req["tpm_key"], usage["total_tokens"] - req["tpm_estimate"])
    except Exception:  # noqa: BLE001 - the counts heal: stale entries age out
        pass


# ---------------------------------------------------------------------- the replies
class Reply:
    """Reads a request's reply list; raises ``ApiError`` 503 once its serving process is gone."""

    def __init__(self, redis, req, rid):
        self.redis, self.req, self.rid, self.key = redis, req, rid, bus.reply(rid)
        self.deadline = time.monotonic() + _setting("SERVING_REQUEST_TIMEOUT_S", 300) + 5

    async def next(self):
        while True:
            got = await self.redis.blpop([self.key], timeout=1)
            if got:
                return bus.unpack(got[1])
            if not await self.redis.exists(bus.alive(self.req["model"])):
                raise ApiError(503, f"The serving process of {self.req['model']} stopped; try again once it is back.",
                               code="server_stopped")
            if time.monotonic() > self.deadline:
                raise ApiError(504, "The request timed out.", code="timeout")

    async def abort(self):
        try:
            await self.redis.rpush(bus.aborts(self.req["model"]), self.rid)
            await self.redis.delete(self.key)
        except Exception:  # noqa: BLE001 - the deadline ends it anyway
            pass


def raise_error(message):
    raise ApiError(message.get("status", 500), message["message"], param=message.get("param"),
                   code=message.get("code"))


def _token_logprob(lp, chat):
    if chat:
        entry = lambda t, p: {"token": t, "logprob": p, "bytes": list(t.encode("utf-8"))}  # noqa: E731
        return {**entry(lp["token"], lp["logprob"]), "top_logprobs": [entry(t, p) for t, p in lp["top"]]}
    return lp


def _completion_logprobs(entries, offset0=0):
    tokens, offsets, at = [], [], offset0
    for e in entries:
        tokens.append(e["token"])
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [dict(e["top"]) for e in entries], "text_offset": offsets}


def _usage(prompt_tokens, completion_tokens):
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _complete(request, kind):
    team, teams = await authenticate(request)
    req = parse(_body(request), kind)
    redis = bus.async_client()
    figures = await served(redis, req["model"])
    if figures is None or not visible(figures, teams):  # another team's: as if it did not exist
        await redis.aclose()
        raise ApiError(404, f"The model `{req['model']}` does not exist or is not being served; GET /v1/models "
                            "lists the served ones.", param="model", code="model_not_found")
    rid = uuid.uuid4().hex
    try:
        await admit(redis, req, figures, team, rid)
    except ApiError:
        await redis.aclose()
        raise
    message = {k: req.get(k) for k in ("kind", "messages", "prompt", "max_tokens", "temperature", "top_p", "n",
                                       "stop", "seed", "logprobs", "top_logprobs")}
    message.update(id=rid, reply=bus.reply(rid), team=team, sent_at=time.time(),
                   deadline=time.time() + _setting("SERVING_REQUEST_TIMEOUT_S", 300))
    reply = Reply(redis, req, rid)
    try:
        await redis.rpush(bus.requests(req["model"]), bus.pack(message))
        first = await reply.next()
        if first["type"] == "error":
            raise_error(first)
    except BaseException:
        await reply.abort()
        await release(redis, req, rid)
        await redis.aclose()
        raise
    if req["stream"]:
        response = StreamingHttpResponse(_stream(reply, req, first["prompt_tokens"], kind),
                                         content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
    try:
        return JsonResponse(await _whole(reply, req, first["prompt_tokens"], kind))
    finally:
        await redis.aclose()


async def _whole(reply, req, prompt_tokens, kind):
    n, chat = req["n"], kind == "chat"
    texts, finish, counts, lps = [""] * n, [None] * n, [0] * n, [[] for _ in range(n)]
    usage = None
    try:
        while any(f is None for f in finish):
            m = await reply.next()
            if m["type"] == "error":
                raise_error(m)
            if m["type"] == "token":
                texts[m["index"]] += m["text"]
                if "logprob" in m:
                    lps[m["index"]].append(_token_logprob(m["logprob"], chat))
            elif m["type"] == "done":
                finish[m["index"]], counts[m["index"]] = m["finish_reason"], m["completion_tokens"]
        usage = _usage(prompt_tokens, sum(counts))
    except BaseException:
        await reply.abort()
        raise
    finally:
        await release(reply.redis, req, reply.rid, usage)
    ident, created = reply.rid, int(time.time())
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i], "refusal": None},
                    "logprobs": {"content": lps[i], "refusal": None} if req["logprobs"] else None,
                    "finish_reason": finish[i]} for i in range(n)]
        return {"id": f"chatcmpl-{ident}", "object": "chat.completion", "created": created, "model": req["model"],
                "system_fingerprint": None, "choices": choices, "usage": usage}
    choices = [{"index": i, "text": texts[i], "finish_reason": finish[i],
                "logprobs": _completion_logprobs(lps[i]) if req["logprobs"] else None} for i in range(n)]
    return {"id": f"cmpl-{ident}", "object": "text_completion", "created": created, "model": req["model"],
            "system_fingerprint": None, "choices": choices, "usage": usage}


def _sse(data):
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _stream(reply, req, prompt_tokens, kind):
    """Server-sent events as OpenAI sends them, ending in ``data: [DONE]``; an error after the
    first byte goes out as an event with OpenAI's error body (the status is already sent)."""
    n, chat, created = req["n"], kind == "chat", int(time.time())
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{reply.rid}"
    head = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": req["model"], "system_fingerprint": None}
    if req["include_usage"]:
        head["usage"] = None
    counts, open_choices, offsets = [0] * n, set(range(n)), [0] * n
    usage, finished = None, False
    try:
        if chat:
            for i in range(n):
                yield _sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}]})
        while open_choices:
            try:
                m = await reply.next()
                if m["type"] == "error":
                    raise_error(m)
            except ApiError as exc:
                yield _sse(exc.body())
                finished = True
                return
            i = m.get("index", 0)
            if m["type"] == "token":
                lp = _token_logprob(m["logprob"], chat) if "logprob" in m else None
                if chat:
                    choice = {"index": i, "delta": {"content": m["text"]},
                              "logprobs": {"content": [lp], "refusal": None} if lp else None, "finish_reason": None}
                else:
                    choice = {"index": i, "text": m["text"], "finish_reason": None,
                              "logprobs": _completion_logprobs([lp], offsets[i]) if lp else None}
                    offsets[i] += len(m["text"])
                yield _sse({**head, "choices": [choice]})
            elif m["type"] == "done":
                counts[i] = m["completion_tokens"]
                open_choices.discard(i)
                last = ({"index": i, "delta": {}, "logprobs": None, "finish_reason": m["finish_reason"]} if chat else
                        {"index": i, "text": "", "logprobs": None, "finish_reason": m["finish_reason"]})
                yield _sse({**head, "choices": [last]})
        usage = _usage(prompt_tokens, sum(counts))
        if req["include_usage"]:
            yield _sse({**head, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        if not finished:  # the client went away (or the server is stopping): free its sequences now
            await asyncio.shield(reply.abort())
        await asyncio.shield(release(reply.redis, req, reply.rid, usage))
        await reply.redis.aclose()


@openai_view("POST")
async def chat_completions(request):
    """OpenAI's ``POST /v1/chat/completions``."""
    return await _complete(request, "chat")


@openai_view("POST")
async def completions(request):
    """OpenAI's ``POST /v1/completions``."""
    return await _complete(request, "completion")


async def _served_models():
    redis = bus.async_client()
    try:
        keys = [key async for key in redis.scan_iter(match=bus.alive_pattern(), count=100)]
        raws = await redis.mget(keys) if keys else []
    finally:
        await redis.aclose()
    return [bus.unpack(raw) for raw in raws if raw]


def _model_out(figures):
    return {"id": figures["model"], "object": "model", "created": int(figures["started_at"]),
            "owned_by": "llm-architecture-explorer", "context_length": figures["context"]}


@openai_view("GET")
async def models(request):
    """OpenAI's ``GET /v1/models``: the models a serving process serves now."""
    _, teams = await authenticate(request)
    return JsonResponse({"object": "list", "data": sorted((_model_out(f) for f in await _served_models()
                                                           if visible(f, teams)), key=lambda m: m["id"])})


@openai_view("GET")
async def model(request, model_id):
    """OpenAI's ``GET /v1/models/<id>``."""
    _, teams = await authenticate(request)
    for figures in await _served_models():
        if figures["model"] == model_id and visible(figures, teams):
            return JsonResponse(_model_out(figures))
    raise ApiError(404, f"The model `{model_id}` does not exist or is not being served.", param="model",
                   code="model_not_found")


urlpatterns = [
    path("chat/completions", chat_completions, name="chat"),
    path("completions", completions, name="completions"),
    path("models", models, name="models"),
    path("models/<str:model_id>", model, name="model"),
]
