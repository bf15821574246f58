"""Chat with a pretrained chat model (SmolLM2-135M-Instruct), one job per assistant turn.

A user's message is checked here (``plan``: the conversation in the model's chat template, with
the new message and ``max_new_tokens``, must fit the model's context; the sampling settings; the
model's files are there), then submitted as a job of the "chat" kind through the one submission
path (``explorer.jobs.submission``: priority, quota, rate limit, fit, create, enqueue), whose
``before_enqueue`` saves the user's message and the assistant's empty one, linked to the job. A
worker runs it (``run_chat_job``, inside ``lifecycle.job_run``): the conversation so far through
the chat template, the model loaded once per worker process, decoding until the end-of-turn token
or ``max_new_tokens``. Each token goes out as a "token" event as soon as it is sampled (with its
probability and likeliest alternatives), then a "reply" event and "end"; the assistant's message
is saved with its text and tokens. A cancelled or failed turn keeps the tokens written so far.

The job's spec holds the conversation's id, counts and settings, never the messages' text: a
conversation is its owner's only (the kind is ``private``: other members of the team do not see
its jobs).
"""
import random

from django.utils import timezone

import engine
from engine.config import events
from engine.interop import pretrained as engine_pretrained
from explorer.inference.models import Conversation, Message
from explorer.jobs import lifecycle, services
from explorer.jobs.models import Job

MODEL = "smollm2-135m-instruct"  # the chat model: a key of explorer.inference.jobs.PRETRAINED
MAX_CONTENT_CHARS = 8000
MAX_NEW_TOKENS = 1024
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 1000
TOP_ALTERNATIVES = 5
TITLE_CHARS = 60

# SmolLM2's own generation config suggests temperature 0.2 and top-p 0.9
DEFAULTS = {"max_new_tokens": 256, "temperature": 0.2, "top_k": None, "top_p": 0.9, "greedy": False, "seed": None}

HELP = {
    "greedy": "Always the likeliest token: the same answer every time (temperature 0).",
    "temperature": f"0–{MAX_TEMPERATURE:g}: lower is more focused, higher more varied.",
    "top_k": "Sample only among the k likeliest tokens; empty = no limit.",
    "top_p": "Nucleus sampling: the smallest set of tokens whose probabilities add up to p (0–1]; empty = off.",
    "max_new_tokens": f"The longest answer, in tokens (1–{MAX_NEW_TOKENS}); it usually ends sooner, at the end of its turn.",
    "seed": "Sampling seed; empty = a new one each message.",
}


def model_label(key=MODEL):
    from explorer.inference.jobs import PRETRAINED

    return PRETRAINED[key][1]


def engine_name(key=MODEL):
    from explorer.inference.jobs import PRETRAINED

    return PRETRAINED[key][0]


def unavailable(key=MODEL):
    """None when the chat model can be loaded here; else why not, with how to install it."""
    return engine_pretrained.available(engine_name(key))


def context_size(key=MODEL):
    return engine_pretrained.pretrained_config(engine_name(key)).block_size


def options(key=MODEL):
    """What the chat page needs: the model, its context, the settings' defaults, limits and help,
    and why it cannot run when it cannot."""
    entry = engine_pretrained.PRETRAINED[engine_name(key)]
    return {"model": {"key": key, "label": model_label(key), "title": entry.title, "parameters": entry.parameters,
                      "context": context_size(key), "licence": entry.licence, "note": entry.note},
            "defaults": DEFAULTS, "help": HELP, "unavailable": unavailable(key),
            "limits": {"content_chars": MAX_CONTENT_CHARS, "max_new_tokens": MAX_NEW_TOKENS,
                       "temperature": MAX_TEMPERATURE, "top_k": MAX_TOP_K}}


# ---------------------------------------------------------------------------- conversations
def conversations_of(user):
    """The only conversations a user may see: their own."""
    if not user.is_authenticated:
        return Conversation.objects.none()
    return Conversation.objects.filter(owner=user)


def is_id(value):
    """Whether ``value`` can be a row's id (an int the database can compare with: no bool, no huge one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


def history(conversation, before=None):
    """The conversation's turns as the chat template reads them ([{"role", "content"}]), those
    before the message ``before`` (an id) when given; turns that produced no text are left out."""
    qs = conversation.messages.order_by("pk")
    if before is not None:
        qs = qs.filter(pk__lt=before)
    return [{"role": m.role, "content": m.content} for m in qs.only("role", "content") if m.content]


def pending(conversation):
    """The assistant message still being written (its job queued or running), or None."""
    return (conversation.messages.filter(role=Message.Role.ASSISTANT, job__status__in=[Job.Status.QUEUED,
                                                                                     Job.Status.RUNNING])
            .select_related("job").first())


def title_from(content):
    text = " ".join(content.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1].rstrip() + "…"


# ---------------------------------------------------------------------------- validation
def validate(user, payload):
    """The turn's settings and counts (the job's ``spec["chat"]``) or ``SpecError`` by field."""
    from explorer.inference.jobs import _float, _int, _pretrained_tokenizer

    if not isinstance(payload, dict):
        raise services.SpecError({"request": "expected a JSON object"})
    errors = {}
    why = unavailable()
    if why:
        raise services.SpecError({"model": why})
    conversation = None
    ref = payload.get("conversation")
    if ref is not None:
        conversation = conversations_of(user).filter(pk=ref).first() if is_id(ref) else None
        if conversation is None:
            raise services.SpecError({"conversation": f"no conversation {ref!r} of yours"})
        busy = pending(conversation)
        if busy is not None:
            errors["content"] = ("the answer to your last message is still being written (job "
                                 f"#{busy.job_id}, {busy.job.status}); wait for it or stop it, then send again")
    content = payload.get("content")
    if not isinstance(content, str) or not content.strip():
        errors["content"] = "write a message (at least one character that is not a space)"
        content = ""
    elif len(content) > MAX_CONTENT_CHARS:
        errors["content"] = f"your message has {len(content):,} characters; the limit is {MAX_CONTENT_CHARS:,}"
    else:
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            errors["content"] = "your message is not valid Unicode (a lone surrogate)"
    values = {**DEFAULTS, **{k: v for k, v in payload.items() if k in DEFAULTS}}
    if not isinstance(values["greedy"], bool):
        errors["greedy"] = "expected true or false"
    settings = {
        "max_new_tokens": _int(values["max_new_tokens"], "max_new_tokens", 1, MAX_NEW_TOKENS, errors),
        "temperature": _float(values["temperature"], "temperature", 0.0, MAX_TEMPERATURE, errors),
        "top_k": _int(values["top_k"], "top_k", 1, MAX_TOP_K, errors, optional=True),
        "top_p": _float(values["top_p"], "top_p", 0.0, 1.0, errors, optional=True, open_low=True),
        "seed": _int(values["seed"], "seed", 0, 2**31 - 1, errors, optional=True),
        "greedy": values["greedy"] is True,
    }
    if settings["greedy"]:
        settings["temperature"] = 0.0
    if settings["seed"] is None:
        settings["seed"] = random.randrange(2**31)
    n_prompt = None
    if "content" not in errors:
        tokenizer = _pretrained_tokenizer(engine_name())
        turns = (history(conversation) if conversation else []) + [{"role": "user", "content": content}]
        n_prompt = len(tokenizer.encode_chat(turns))
        context, new = context_size(), settings["max_new_tokens"]
        if new is not None and n_prompt + new > context:
            errors["content"] = (
                f"the conversation is {n_prompt:,} tokens in the model's chat template with your message; with "
                f"max_new_tokens ({new:,}) that is {n_prompt + new:,}, more than the model's context of {context:,} "
                f"tokens: shorten it by {n_prompt + new - context:,} tokens, ask for fewer new tokens, or start a new "
                "conversation")
    if errors:
        raise services.SpecError(errors)
    return {"conversation": conversation.pk if conversation else None, "model": MODEL, "source": {
        "pretrained": MODEL, "name": model_label(), "family": "decoder"}, **settings,
        "n_prompt_tokens": n_prompt, "context_tokens": n_prompt + settings["max_new_tokens"]}


def memory_bytes(spec):
    """The analysis' inference memory for one sequence as long as the turn can get (the
    conversation and the new tokens), not the model's whole context."""
    cfg = engine_pretrained.pretrained_config(engine_name(spec.get("model", MODEL)))
    return engine.analyze(cfg, batch_size=1, seq_len=spec["context_tokens"])["memory"]["inference"]["total"]


# ---------------------------------------------------------------------------- submission
def send(user, team, content, *, conversation=None, settings=None, priority="normal"):
    """The user's message into ``conversation`` (None: a new one, titled after the message) and
    a chat job to answer it: ``(conversation, user message, assistant message, job)``."""
    from explorer.jobs import submission

    payload = {**(settings or {}), "content": content, "conversation": conversation.pk if conversation else None}
    made = {}

    def before_enqueue(job):  # in the job's transaction: the messages, linked to it
        text = services.storable(content)  # (PostgreSQL's text holds no NUL)
        conv = conversation
        if conv is None:
            conv = Conversation.objects.create(owner=user, title=title_from(text), model=MODEL)
        else:  # one answer at a time: a second message sent meanwhile is refused
            conv = Conversation.objects.select_for_update().get(pk=conv.pk)
            busy = pending(conv)
            if busy is not None and busy.job_id != job.pk:
                raise services.SpecError({"content": "the answer to your last message is still being written; "
                                                     "wait for it or stop it, then send again"})
        asked = Message.objects.create(conversation=conv, role=Message.Role.USER, content=text)
        spec = job.spec
        spec["chat"]["conversation"] = conv.pk
        answer = Message.objects.create(conversation=conv, role=Message.Role.ASSISTANT, job=job,
                                        settings={k: spec["chat"][k] for k in DEFAULTS},
                                        n_prompt_tokens=spec["chat"]["n_prompt_tokens"])
        Job.objects.filter(pk=job.pk).update(spec=spec)
        conv.save(update_fields=["updated_at"])
        made.update(conversation=conv, asked=asked, answer=answer)

    job = submission.submit(user, team, "chat", payload, priority=priority, before_enqueue=before_enqueue)
    return made["conversation"], made["asked"], made["answer"], job


def delete(conversation):
    """Delete a conversation and what it wrote: the jobs of its finished answers go with it (their
    event logs hold the answers' tokens); an answer still being written is cancelled, and its job
    (which the worker still holds) stays, cancelled, with the tokens written before the cancel."""
    from django.db import transaction

    busy = pending(conversation)
    if busy is not None:
        services.cancel_job(busy.job)
    with transaction.atomic():
        Job.objects.filter(kind="chat", chat_message__conversation=conversation, status__in=Job.TERMINAL) \
            .exclude(status=Job.Status.CANCELLED, pk=getattr(busy, "job_id", None)).delete()
        conversation.delete()


# ---------------------------------------------------------------------------- as the API shows them
def message_to_dict(message, job_status=None):
    out = {"id": message.pk, "role": message.role, "content": message.content,
           "created_at": message.created_at.isoformat()}
    if message.role == Message.Role.ASSISTANT:
        job = message.job if message.job_id else None
        out |= {"tokens": message.tokens, "settings": message.settings, "stopped_by": message.stopped_by,
                "n_prompt_tokens": message.n_prompt_tokens, "job": message.job_id,
                "status": job_status or (job.status if job else "succeeded"),
                "error": job.error if job else ""}
    return out


def conversation_to_dict(conversation, messages=True):
    out = {"id": conversation.pk, "title": conversation.display_title, "model": conversation.model,
           "created_at": conversation.created_at.isoformat(), "updated_at": conversation.updated_at.isoformat(),
           "url": f"/chat/{conversation.pk}/"}
    if messages:
        rows = conversation.messages.select_related("job").order_by("pk")
        out["messages"] = [message_to_dict(m) for m in rows]
        busy = pending(conversation)
        out["pending"] = None
        if busy is not None:
            place = services.queue_positions([busy.job])[busy.job.pk] or {}
            out["pending"] = {"job": busy.job_id, "status": busy.job.status, "position": place.get("position"),
                              "starts_in_s": place.get("starts_in_s")}
    return out


# ---------------------------------------------------------------------------- the run (in a worker)
def _explain(exc):
    return str(exc) if isinstance(exc, ValueError) else None


def run_chat_job(job_id, worker_name):
    """Answer one turn (see the module's docstring); the job's final status, or None when it was
    no longer queued."""
    streamed = []  # the tokens sampled so far, kept on the message whatever the outcome

    def on_end(run):
        message = Message.objects.filter(job_id=job_id).first()
        if message is None or run.status == Job.Status.SUCCEEDED:
            return
        tokenizer = engine_pretrained.load_pretrained(engine_name())[1] if streamed else None
        ids = [t["id"] for t in streamed if t["id"] != getattr(tokenizer, "eos_token_id", None)]
        Message.objects.filter(pk=message.pk).update(
            tokens=services.storable(streamed), content=services.storable(tokenizer.decode(ids)) if tokenizer else "",
            stopped_by="cancelled" if run.status == Job.Status.CANCELLED else "failed")

    with lifecycle.job_run(job_id, worker_name, what="chat turn", explain=_explain, on_end=on_end) as run:
        if run is None:
            return None
        recorder, spec = run.recorder, run.job.spec["chat"]
        message = Message.objects.filter(job_id=job_id).select_related("conversation").first()
        if message is None:
            raise ValueError("its conversation was deleted before the answer started")
        turns = history(message.conversation, before=message.pk)
        model, tokenizer = engine_pretrained.load_pretrained(engine_name(spec["model"]))  # once per process
        prompt = tokenizer.apply_chat_template(turns, add_generation_prompt=True)
        n_prompt = len(tokenizer.encode(prompt))
        if n_prompt + spec["max_new_tokens"] > model.config.block_size:  # (checked at submission too)
            raise ValueError(f"the conversation is {n_prompt} tokens; with max_new_tokens ({spec['max_new_tokens']}) "
                             f"that is more than the model's context of {model.config.block_size} tokens")
        n_params = sum(p.numel() for p in model.parameters())
        Job.objects.filter(pk=job_id).update(params=n_params)
        recorder(events.StartEvent(kind="start", total_steps=100, device=str(next(model.parameters()).device),
                                   family=model.config.family, params=n_params, source=spec["source"],
                                   n_prompt_tokens=n_prompt))

        def on_token(_, token):
            if run.should_stop():
                raise lifecycle.JobCancelled()
            if token["id"] == tokenizer.eos_token_id:  # the last: shown as the end of the turn, not as text
                token = {**token, "end_of_turn": True}
            recorder(events.TokenEvent(kind="token", index=len(streamed), **token))
            streamed.append(token)

        out = engine.run_inference(model, tokenizer, [prompt], max_new_tokens=spec["max_new_tokens"],
                                   temperature=spec["temperature"], top_k=spec["top_k"], top_p=spec["top_p"],
                                   seed=spec["seed"], top_alternatives=TOP_ALTERNATIVES, compare_cache=False,
                                   stop_ids=[tokenizer.eos_token_id], on_token=on_token, warm_up=False)
        result, measured = out["results"][0], out["measurements"]["with_cache"]
        Message.objects.filter(pk=message.pk).update(content=services.storable(result["completion"]),
                                                     tokens=services.storable(streamed),
                                                     stopped_by=result["stopped_by"], n_prompt_tokens=n_prompt)
        Conversation.objects.filter(pk=message.conversation_id).update(updated_at=timezone.now())
        recorder(events.ReplyEvent(kind="reply", message=message.pk, text=result["completion"],
                                   stopped_by=result["stopped_by"], n_prompt_tokens=n_prompt,
                                   n_new_tokens=result["n_new_tokens"], ttft_s=measured["ttft_s"],
                                   tokens_per_s=measured["tokens_per_s"]))
        recorder.summary.update({"tokens_per_s": measured["tokens_per_s"], "ttft_s": measured["ttft_s"]})
        recorder(events.EndEvent(kind="end", reason="finished", step=100, elapsed=round(run.elapsed(), 3)))
    return run.status
