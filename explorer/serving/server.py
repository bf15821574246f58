"""The serving process: one model, its continuous-batching engine, and the Redis lists the web
hands requests over (``explorer.serving.bus``).

One loop, one thread for the model: take the requests that came (blocking briefly only when
there is nothing to compute), drop the aborted ones, run one engine step (every running
sequence gets its next token; waiting ones are admitted and prefilled in chunks), and push each
step's tokens to their requests' reply lists in one round trip. Text is decoded here, with the
stop strings, so the web needs neither the tokenizer nor torch. Every second at least, the
process beats: its live figures under ``bus.alive(model)`` (what the Serving page and
``GET /v1/models`` read) and its ``Worker`` row (the Workers page), like a Celery worker's.
"""
import collections
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings

from explorer.serving import bus, loadtest

log = logging.getLogger(__name__)

HISTORY = 500  # finished requests kept for the latency histograms
RATE_WINDOW_S = 5.0  # tokens/s over this window


def _setting(name, default):
    return getattr(settings, name, default)


@dataclass
class Choice:
    """One sampled answer of a request (``n`` of them share its prompt)."""

    index: int
    ids: list = field(default_factory=list)
    sent: str = ""  # text already pushed to the client
    done: bool = False
    first_at: float | None = None


@dataclass
class Request:
    id: str
    reply: str
    kind: str  # "chat" or "completion"
    prompt_ids: list
    stop: list
    deadline: float
    sent_at: float
    team: int | None
    choices: list
    params_max_tokens: int = 0
    logprobs: bool = False

    def engine_id(self, index):
        return f"{self.id}/{index}"


class Server:
    def __init__(self, model_id, model, tokenizer, *, max_batch=None, kv_bytes=None, block_size=None,
                 prefill_chunk=None, max_waiting=None, policy="continuous", team=None, title=None):
        from engine.serving import ServingEngine

        self.model_id, self.model, self.tokenizer = model_id, model, tokenizer
        self.team, self.title = team, title or model_id  # a team's checkpoint: only its members see it
        self.engine = ServingEngine(
            model, max_batch=max_batch or _setting("SERVING_MAX_BATCH", 16),
            kv_bytes=kv_bytes or _setting("SERVING_KV_BYTES", 512 * 2**20),
            block_size=block_size or _setting("SERVING_BLOCK_SIZE", 16),
            prefill_chunk=prefill_chunk or _setting("SERVING_PREFILL_CHUNK", 256), policy=policy)
        self.max_waiting = max_waiting or _setting("SERVING_MAX_QUEUED", 64)
        self.context = model.config.block_size
        self.stop_ids = tuple(i for i in [getattr(tokenizer, "eos_token_id", None)] if i is not None)
        self.redis = bus.sync_client()
        self.live: dict[str, Request] = {}
        self.by_engine_id: dict[str, tuple[Request, Choice]] = {}
        self.finished = collections.deque(maxlen=HISTORY)  # (ttft_s, tpot_s or None, tokens, e2e_s)
        self.token_times = collections.deque()  # (time, tokens) per step, over RATE_WINDOW_S
        self.totals = {"requests": 0, "tokens": 0, "errors": 0, "aborted": 0, "timed_out": 0}
        self.started_at = time.time()
        self.last_beat = 0.0
        self.snapshot = {}
        self.stopping = threading.Event()

    # ------------------------------------------------------------------ the loop
    def run(self):
        self.redis.delete(bus.requests(self.model_id), bus.aborts(self.model_id))  # left by a dead predecessor:
        self.beat(force=True)  # their clients were told it stopped
        self.redis.set(bus.alive(self.model_id), bus.pack(self.snapshot), px=int(bus.ALIVE_TTL_S * 1000))
        beat = Beat(self)
        beat.start()
        cache = self.engine.cache
        log.info("serving %s: %d KV blocks of %d positions (%.0f MiB), batch up to %d", self.model_id,
                 cache.num_blocks, cache.block_size, cache.num_blocks * cache.bytes_per_block / 2**20,
                 self.engine.max_batch)
        import redis

        try:
            while not self.stopping.is_set():
                try:
                    self.take(block=not self.engine.has_work())
                    self.take_aborts_and_control()
                    self.expire()
                    if self.engine.has_work():
                        outputs = self.engine.step()
                        self.deliver(outputs)
                    self.beat()
                except redis.exceptions.RedisError:  # Redis restarting: its clients time out or retry
                    log.warning("serving %s: Redis did not answer; trying again in a second", self.model_id,
                                exc_info=True)
                    self.stopping.wait(1.0)
        finally:  # stopped, or a failure: either way its clients hear of it at once
            self.stopping.set()
            beat.join()
            self.shutdown()

    def take(self, block):
        key = bus.requests(self.model_id)
        raws = []
        if block:
            got = self.redis.blpop([key], timeout=0.5)
            if got:
                raws.append(got[1])
        with self.redis.pipeline() as pipe:  # everything else waiting, atomically
            pipe.lrange(key, 0, -1).delete(key)
            raws.extend(pipe.execute()[0])
        for raw in raws:
            msg = None
            try:
                msg = bus.unpack(raw)
                self.admit(msg)
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
                log.exception("serving %s: a request could not be served", self.model_id)
                self.totals["errors"] += 1
                if isinstance(msg, dict) and msg.get("reply"):
                    self.push({msg["reply"]: [{"type": "error", "status": 500, "code": "server_error",
                                               "message": f"the server could not serve it: {exc}"}]})

    def admit(self, msg):
        from engine.serving import SamplingParams

        reply = msg["reply"]
        if time.time() > msg["deadline"]:
            self.totals["timed_out"] += 1
            return self.push({reply: [{"type": "error", "status": 504, "code": "timeout",
                                       "message": "the request timed out while it waited"}]})
        try:
            prompt_ids = self.encode(msg)
        except ValueError as exc:
            return self.push({reply: [{"type": "error", "status": 400, "message": str(exc), "param": "messages"
                                       if msg["kind"] == "chat" else "prompt"}]})
        n, max_tokens = msg.get("n", 1), msg.get("max_tokens")
        room = self.context - len(prompt_ids)
        if max_tokens is None:
            max_tokens = room
        if room < 1 or max_tokens > room:
            return self.push({reply: [{"type": "error", "status": 400, "param": "max_tokens", "code": "context_length_exceeded",
                                       "message": f"This model's maximum context length is {self.context} tokens. "
                                                  f"However, you requested {len(prompt_ids) + max_tokens} tokens "
                                                  f"({len(prompt_ids)} in the messages, {max_tokens} in the completion). "
                                                  "Please reduce the length of the messages or completion."}]})
        if self.engine.stats()["waiting"] + n > self.max_waiting + self.engine.max_batch:
            return self.push({reply: [{"type": "error", "status": 429, "code": "queue_full",
                                       "message": f"the server's queue is full ({self.max_waiting} waiting); try again"}]})
        seed = msg.get("seed")
        request = Request(id=msg["id"], reply=reply, kind=msg["kind"], prompt_ids=prompt_ids,
                          stop=[s for s in msg.get("stop") or [] if s], deadline=msg["deadline"],
                          sent_at=msg.get("sent_at", time.time()), team=msg.get("team"),
                          choices=[Choice(i) for i in range(n)], params_max_tokens=max_tokens,
                          logprobs=bool(msg.get("logprobs")))
        added = []
        for choice in request.choices:
            params = SamplingParams(max_tokens=max_tokens, temperature=msg.get("temperature", 1.0),
                                    top_p=msg.get("top_p"), stop_token_ids=self.stop_ids,
                                    seed=None if seed is None else seed + choice.index,
                                    logprobs=msg.get("top_logprobs") or 0)
            try:
                self.engine.add(request.engine_id(choice.index), prompt_ids, params)
            except ValueError as exc:  # e.g. more KV blocks than the whole pool
                for engine_id in added:
                    self.engine.abort(engine_id)
                    self.by_engine_id.pop(engine_id, None)
                return self.push({reply: [{"type": "error", "status": 400, "message": str(exc)}]})
            added.append(request.engine_id(choice.index))
            self.by_engine_id[request.engine_id(choice.index)] = (request, choice)
        self.live[request.id] = request
        self.totals["requests"] += 1
        self.push({reply: [{"type": "accepted", "prompt_tokens": len(prompt_ids), "max_tokens": max_tokens}]})

    def encode(self, msg):
        if msg["kind"] == "chat":
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(f"{self.model_id} has no chat template: use /v1/completions")
            return self.tokenizer.encode_chat(msg["messages"], add_generation_prompt=True)
        ids = self.tokenizer.encode(msg["prompt"])
        if not ids:
            raise ValueError("the prompt is empty")
        return ids

    def take_aborts_and_control(self):
        """Drop the aborted requests and apply the control messages, both read in one round trip."""
        from engine.serving.engine import ADMISSIONS

        aborts, control = bus.aborts(self.model_id), bus.control(self.model_id)
        with self.redis.pipeline() as pipe:
            pipe.lrange(aborts, 0, -1).lrange(control, 0, -1).delete(aborts, control)
            ids, changes, _ = pipe.execute()
        for raw in ids:
            request = self.live.pop(raw.decode(), None)
            if request is not None:
                self.totals["aborted"] += 1
                self.drop(request)
        for raw in changes:
            try:
                change = bus.unpack(raw)
            except ValueError:
                log.warning("serving %s: unreadable control message %r", self.model_id, raw)
                continue
            policy = change.get("policy")
            if policy in ADMISSIONS and policy != self.engine.policy:
                self.engine.set_policy(policy)  # (between steps: the next admits by the new rule)
                log.info("serving %s: batching policy now %s", self.model_id, policy)

    def expire(self):
        now = time.time()
        for request in [r for r in self.live.values() if now > r.deadline]:
            self.totals["timed_out"] += 1
            del self.live[request.id]
            self.drop(request)
            self.push({request.reply: [{"type": "error", "status": 504, "code": "timeout",
                                        "message": "the request timed out"}]})

    def drop(self, request):
        for choice in request.choices:
            self.engine.abort(request.engine_id(choice.index))
            self.by_engine_id.pop(request.engine_id(choice.index), None)

    # ------------------------------------------------------------------ tokens out
    def deliver(self, outputs):
        now = time.time()
        messages = collections.defaultdict(list)
        for out in outputs:
            found = self.by_engine_id.get(out.request_id)
            if found is None:
                continue
            request, choice = found
            if choice.first_at is None:
                choice.first_at = now
            choice.ids.append(out.token)
            stopped_by_token = out.finish_reason == "stop"
            text = _decode(self.tokenizer, [t for t in choice.ids if t not in self.stop_ids])
            finish = out.finish_reason
            cut = _first_stop(text, request.stop, len(choice.sent))
            if cut is not None:
                text, finish = text[:cut], "stop"
            elif not out.finished and text.endswith("\ufffd"):
                text = choice.sent  # half a character: wait for the rest of its bytes
            delta, choice.sent = text[len(choice.sent):], text
            message = {"type": "token", "index": choice.index, "text": delta}
            if request.logprobs and not stopped_by_token:
                message["logprob"] = {"token": _decode(self.tokenizer, [out.token], special=True),
                                      "logprob": out.logprob,
                                      "top": [[_decode(self.tokenizer, [i], special=True), lp]
                                              for i, lp in out.top]}
            if delta or "logprob" in message:
                messages[request.reply].append(message)
            if finish is not None:
                if not out.finished:
                    self.engine.abort(out.request_id)
                choice.done = True
                self.by_engine_id.pop(out.request_id, None)
                messages[request.reply].append({"type": "done", "index": choice.index, "finish_reason": finish,
                                                "completion_tokens": len(choice.ids)})
                n = len(choice.ids)
                self.finished.append((choice.first_at - request.sent_at,
                                      (now - choice.first_at) / (n - 1) if n > 1 else None, n, now - request.sent_at))
                if all(c.done for c in request.choices):
                    self.live.pop(request.id, None)
        self.token_times.append((now, len(outputs)))
        self.totals["tokens"] += len(outputs)
        self.push(messages)

    def push(self, messages):
        if not messages:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for key, items in messages.items():
                pipe.rpush(key, *[bus.pack(m) for m in items]).expire(key, bus.REPLY_TTL_S)
            pipe.execute()

    # ------------------------------------------------------------------ the heartbeat
    def figures(self):
        now = time.time()
        while self.token_times and self.token_times[0][0] < now - RATE_WINDOW_S:
            self.token_times.popleft()
        window = min(RATE_WINDOW_S, now - self.started_at) or 1.0
        stats = self.engine.stats()
        ttft = [f[0] for f in self.finished]
        tpot = [f[1] for f in self.finished if f[1] is not None]
        return {
            "model": self.model_id, "title": self.title, "team": self.team, "host": socket.gethostname(), "pid": os.getpid(), "at": now,
            "started_at": self.started_at, "context": self.context, "max_batch": self.engine.max_batch,
            "max_queued": self.max_waiting, "policy": self.engine.policy, **stats,
            "block_bytes": self.engine.cache.bytes_per_block,
            "tokens_per_s": round(sum(n for _, n in self.token_times) / window, 2),
            "live_requests": len(self.live), "totals": dict(self.totals),
            "waiting_tokens": sum(len(r.prompt_ids) + r.params_max_tokens for r in self.live.values()
                                  if all(c.first_at is None for c in r.choices)),
            "ttft_s": [round(x, 4) for x in ttft], "tpot_s": [round(x, 5) for x in tpot],
            "ttft_p50_s": _p(ttft, 50), "ttft_p99_s": _p(ttft, 99),
            "tpot_p50_s": _p(tpot, 50), "tpot_p99_s": _p(tpot, 99),
        }

    def beat(self, force=False):
        """The loop's figures, at most every half second (``Beat`` publishes them)."""
        now = time.monotonic()
        if force or now - self.last_beat >= 0.5:
            self.last_beat = now
            self.snapshot = self.figures()


    def shutdown(self):
        """Tell every waiting client, free everything, stop beating (the web then refuses at once)."""
        messages = {r.reply: [{"type": "error", "status": 503, "code": "server_stopped",
                               "message": f"the serving process of {self.model_id} stopped"}] for r in self.live.values()}
        for request in list(self.live.values()):
            self.drop(request)
        self.live.clear()
        try:
            self.push(messages)
            self.redis.delete(bus.alive(self.model_id))
        except Exception:  # noqa: BLE001
            log.warning("serving %s: could not say goodbye", self.model_id, exc_info=True)


class Beat(threading.Thread):
    """Publishes the server's latest figures every ``interval`` s from a thread of its own, so
    that a slow step (a long prefill, a machine busy with other work) never lets the key expire
    while the process lives; when the process dies, the key expires ``bus.ALIVE_TTL_S`` later."""

    def __init__(self, server, interval=0.5):
        super().__init__(daemon=True, name=f"serving-beat-{server.model_id}")
        self.server, self.interval = server, interval
        self.redis = bus.sync_client()

    def run(self):
        key, server = bus.alive(self.server.model_id), self.server
        while not server.stopping.wait(self.interval):
            try:
                self.redis.set(key, bus.pack({**server.snapshot, "at": time.time()}), px=int(bus.ALIVE_TTL_S * 1000))
            except Exception:  # noqa: BLE001 - Redis back later: the next beat tries again
                log.warning("serving %s: heartbeat failed", server.model_id, exc_info=True)


def _decode(tokenizer, ids, special=False):
    """Text of ``ids``; special tokens shown only with ``special`` (a chat tokenizer hides them
    by default; the engine's own tokenizers have none and take no such argument)."""
    try:
        return tokenizer.decode(ids, skip_special_tokens=not special)
    except TypeError:
        return tokenizer.decode(ids)


def _first_stop(text, stops, sent):
    """Where the first stop string begins in ``text`` (searched from just before what was sent,
    as a stop string may straddle two steps' text), or None."""
    found = [i for s in stops if (i := text.find(s, max(0, sent - len(s) + 1))) >= 0]
    return min(found) if found else None


def _p(values, q):
    """``loadtest.percentile`` (nearest rank), rounded for the heartbeat."""
    value = loadtest.percentile(values, q)
    return None if value is None else round(value, 4)



def load_served(model_id=None, job=None, step=None):
    """(model id, model, tokenizer, team or None, title) of a pretrained registry name or of a
    training job's checkpoint (``job``, at ``step`` or its latest); ``SystemExit`` saying why not."""
    if job is not None:
        from engine.training import checkpoint as engine_checkpoint
        from explorer.jobs.models import Job
        from explorer.training.checkpoints import NoCheckpoint, checkpoint_path

        row = Job.objects.filter(pk=job).select_related("team").first()
        if row is None:
            raise SystemExit(f"cannot serve job {job}: there is no such job")
        try:
            path = checkpoint_path(row, step)
        except NoCheckpoint as exc:
            raise SystemExit(f"cannot serve job {job}: {exc}") from None
        model, tokenizer, config = engine_checkpoint.load_model(path)
        if config.family != "decoder":
            raise SystemExit(f"cannot serve job {job}: a {config.family} does not generate text token by token; "
                             "serve a decoder")
        step = engine_checkpoint.read_checkpoint(path).step if step is None else step
        return (f"job-{row.pk}", model, tokenizer, row.team_id,
                f"{row.display_name} (job #{row.pk}, step {step}, team {row.team.name})")
    from engine.interop import pretrained as engine_pretrained

    if model_id not in engine_pretrained.PRETRAINED or engine_pretrained.PRETRAINED[model_id].family != "decoder":
        choices = [n for n, p in engine_pretrained.PRETRAINED.items() if p.family == "decoder"]
        raise SystemExit(f"cannot serve {model_id!r}: choose a decoder from {choices}, or a job's checkpoint (--job)")
    why = engine_pretrained.available(model_id)
    if why:
        raise SystemExit(f"cannot serve {model_id}: {why}")
    model, tokenizer = engine_pretrained.load_pretrained(model_id)
    return model_id, model, tokenizer, None, engine_pretrained.PRETRAINED[model_id].title


def serve(model_id=None, *, job=None, step=None, name=None, **kw):
    """Load ``model_id`` (a pretrained registry name) or ``job``'s checkpoint, register as a
    worker, serve until SIGTERM or SIGINT."""
    import platform

    import torch

    from explorer.scheduling import workers

    t0 = time.monotonic()
    model_id, model, tokenizer, team, title = load_served(model_id, job, step)
    model.eval()
    log.info("serving %s: loaded in %.1f s", model_id, time.monotonic() - t0)
    try:
        server = Server(model_id, model, tokenizer, team=team, title=title, **kw)
    except ValueError as exc:  # a model the engine cannot batch (e.g. mixture of experts)
        raise SystemExit(f"cannot serve {model_id}: {exc}") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stopping.set())
    name = name or f"serve-{model_id}@{socket.gethostname()}"
    workers._state.update(name=name, queues=[f"serve:{model_id}"], device=workers.probe_device(["cpu"]), tiers=[],
                          version=f"serving process · torch {torch.__version__} · python {platform.python_version()}")
    workers.register(name)
    try:
        server.run()
    finally:
        workers.unregister(name)
