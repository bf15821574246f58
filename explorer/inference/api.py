"""Inference jobs: prompts through a checkpoint or a pretrained model."""
from typing import Any

from ninja import Router, Schema, Status

from explorer.accounts.api import ErrorOut, team_or_400
from explorer.jobs import services
from explorer.jobs.api import JobOut

# ---------------------------------------------------------------------------- inference
inference = Router(tags=["inference"])


class InferenceIn(Schema):
    name: str = ""
    team: str | None = None
    priority: str = "normal"  # low, normal (high: maintainers)
    source: dict[str, Any] = {}
    prompts: list[str] = []
    max_new_tokens: int = 48
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    stop: list[str] = []
    seed: int = 0
    compare_cache: bool = True
    chat: bool = False  # a chat model's prompts as user turns in its template, ended at the end of turn
    quantization: list[str] = []
    group_size: int = 32
    top_alternatives: int = 5


@inference.post("/inference", response={201: JobOut, 400: ErrorOut, 429: ErrorOut},
                summary="Run prompts through a checkpoint or a pretrained model, as a job")
def create_inference_job(request, payload: InferenceIn):
    """``source``: ``{"job": id, "step": n}`` (a training job of your team; the latest checkpoint
    without ``step``) or a pretrained model, ``{"pretrained": "minilm"}`` (an encoder) or
    ``{"pretrained": "smollm2-135m-instruct"}`` (a decoder), or one of your team's uploaded models,
    ``{"pretrained": "upload-<id>"}`` (``/api/v1/models``; ``/inference/options`` lists them all). Decoders sample continuations (greedy at
    temperature 0, then top-k, top-p, stop strings, seed), measured with and without the KV cache
    (``compare_cache``); ``chat`` (a chat model) puts each prompt in its chat template as a user's
    turn and ends the answer at the end of turn; ``quantization`` (decoders only) adds a table of
    perplexity, size and speed per method. Encoders give the prompts' embedding similarities. The job's events (``/jobs/{id}/
    events``): "progress", "generation", "quantization", "end"."""
    from explorer.inference import jobs as inference_jobs

    team = team_or_400(request, payload.team)
    job = inference_jobs.create_inference_job(request.user, team, payload.dict(exclude={"name", "team", "priority"}),
                                              name=payload.name, priority=payload.priority)
    return Status(201, services.job_to_dict(job, position=services.queue_positions([job])[job.pk]))


@inference.get("/inference/options", summary="What an inference job can start from, and its settings' limits")
def inference_options(request, team: str | None = None):
    from explorer.inference import jobs as inference_jobs

    return inference_jobs.options(team_or_400(request, team))


# ---------------------------------------------------------------------------- chat
class ChatIn(Schema):
    conversation: Any = None  # a conversation of yours to continue; none: a new one, titled after the message
    content: Any = ""
    team: str | None = None  # the team whose queue and quotas the answer's job counts against
    priority: str = "normal"
    max_new_tokens: Any = None
    temperature: Any = None
    top_k: Any = None
    top_p: Any = None
    greedy: Any = None
    seed: Any = None


class ChatOut(Schema):
    conversation: dict[str, Any]
    message: dict[str, Any]
    reply: dict[str, Any]
    job: JobOut


def _conversation_or_404(request, conversation_id):
    from django.http import Http404

    from explorer.inference import chat

    conversation = chat.conversations_of(request.user).filter(pk=conversation_id).first() \
        if chat.is_id(conversation_id) else None
    if conversation is None:  # the same answer whether it is another user's or none at all
        raise Http404(f"No conversation {conversation_id!r} of yours")
    return conversation


@inference.get("/chat/options", summary="The chat model, its context and the sampling settings' defaults and limits")
def chat_options(request):
    from explorer.inference import chat

    return chat.options()


@inference.get("/chat/conversations", summary="Your conversations, the latest first")
def chat_conversations(request, limit: int = 100, offset: int = 0):
    from explorer.inference import chat

    qs = chat.conversations_of(request.user)
    page = qs[max(0, offset): max(0, offset) + max(1, min(limit, 500))]
    return {"count": qs.count(), "conversations": [chat.conversation_to_dict(c, messages=False) for c in page]}


@inference.get("/chat/conversations/{int:conversation_id}", response={200: dict[str, Any], 404: ErrorOut},
               summary="One of your conversations, its messages (each answer's tokens with their probabilities)")
def chat_conversation(request, conversation_id: int):
    from explorer.inference import chat

    return chat.conversation_to_dict(_conversation_or_404(request, conversation_id))


@inference.delete("/chat/conversations/{int:conversation_id}", response={204: None, 404: ErrorOut},
                  summary="Delete one of your conversations (an answer being written is stopped)")
def delete_chat_conversation(request, conversation_id: int):
    from explorer.inference import chat

    chat.delete(_conversation_or_404(request, conversation_id))
    return Status(204, None)


@inference.post("/chat/messages", response={201: ChatOut, 400: ErrorOut, 404: ErrorOut, 429: ErrorOut},
                summary="Send a message to the chat model; its answer is written by a job")
def chat_message(request, payload: ChatIn):
    """Your message goes into ``conversation`` (one of yours; none starts a new one) and a job of the
    "chat" kind is queued to answer it: the conversation so far in the model's chat template,
    sampled with ``temperature``, ``top_k``, ``top_p`` (``greedy``: always the likeliest token) up to
    ``max_new_tokens`` or the end of its turn. Its events (``/ws/jobs/{id}/``, ``/jobs/{id}/events``):
    "start", a "token" per token as it is sampled (its probability and likeliest alternatives),
    "reply", "end". A conversation longer than the model's context with the new tokens is a 400
    naming the numbers; one whose last answer is still being written, a 400."""
    from explorer.inference import chat

    conversation = None if payload.conversation is None else _conversation_or_404(request, payload.conversation)
    team = team_or_400(request, payload.team)
    settings = {k: v for k, v in payload.dict().items() if k in chat.DEFAULTS and v is not None}
    if "top_k" in payload.model_fields_set and payload.top_k is None:
        settings["top_k"] = None
    if "top_p" in payload.model_fields_set and payload.top_p is None:
        settings["top_p"] = None
    conversation, asked, answer, job = chat.send(request.user, team, payload.content, conversation=conversation,
                                                 settings=settings, priority=payload.priority)
    return Status(201, {
        "conversation": chat.conversation_to_dict(conversation, messages=False),
        "message": chat.message_to_dict(asked), "reply": chat.message_to_dict(answer, job_status=job.status),
        "job": services.job_to_dict(job, position=services.queue_positions([job])[job.pk]),
    })


# ---------------------------------------------------------------------------- attention
class AttentionIn(Schema):
    name: str = ""
    team: str | None = None
    priority: str = "normal"
    source: dict[str, Any] = {}  # {"pretrained": "smollm2-135m-instruct"} (the default)
    text: str = ""
    chat: bool = False  # the text as a user's turn in the model's chat template
    messages: list[dict[str, Any]] | None = None  # a chat's turns, rendered in its template


@inference.post("/attention", response={201: JobOut, 400: ErrorOut, 429: ErrorOut},
                summary="Analyse a pretrained model's attention on a text (every layer and head), as a job")
def create_attention_job(request, payload: AttentionIn):
    """``text`` up to the model's context (SmolLM2: 8,192 tokens; longer: a 400 naming both numbers),
    or a chat turn: ``chat`` wraps the text as a user's turn in the chat template, ``messages``
    (``[{"role", "content"}]``) renders a conversation in it. The job's events: "progress",
    "attention_heads" (per-head statistics, every head pooled, the token labels), "end"; one head's
    full map: ``GET /jobs/{id}/attention/head``."""
    from explorer.inference import attention

    team = team_or_400(request, payload.team)
    body = payload.dict(exclude={"name", "team", "priority"})
    if body.get("messages") is None:
        body.pop("messages", None)
    job = attention.create_attention_job(request.user, team, body, name=payload.name, priority=payload.priority)
    return Status(201, services.job_to_dict(job, position=services.queue_positions([job])[job.pk]))


@inference.get("/attention/options", summary="The models an attention job can analyse, and its limits")
def attention_options(request):
    from explorer.inference import attention

    return attention.options()


job_routes = Router(tags=["jobs"])


@job_routes.get("/{int:job_id}/attention/head", response={200: bytes, 400: ErrorOut, 404: ErrorOut, 409: ErrorOut},
                summary="One head's attention map of an attention job, as bytes on a log scale")
def attention_head(request, job_id: int, layer: int = 0, head: int = 0, q0: int = 0, q1: int | None = None,
                   k0: int = 0, k1: int | None = None, cells: int = 2048):
    """Queries ``q0..q1`` × keys ``k0..k1`` (default: the whole map) of one head, recomputed from the
    job's kept queries and keys: ``application/octet-stream``, one byte a cell, row-major (0: a
    weight under 1e-5, else ``w = 10^((byte − 1)/254·5 − 5)``); full resolution up to ``cells``
    (≤ 2,048) a side, pooled beyond. The header ``X-Attention`` holds the shape, block and region
    as JSON. A layer is there as soon as the job's forward has passed it: before that, a 409 (ask
    again shortly)."""
    import json

    from django.http import Http404, HttpResponse

    from explorer.inference import attention
    from explorer.jobs.access import get_job_or_404

    job = get_job_or_404(request.user, job_id)
    try:
        body, meta = attention.head(job, layer=layer, head=head, q0=q0, q1=q1, k0=k0, k1=k1, cells=cells)
    except attention.BadHead as exc:
        return Status(400, {"detail": f"Invalid head: {exc}", "errors": exc.errors})
    except attention.NotYet as exc:
        return Status(409, {"detail": str(exc)})
    except attention.NoMaps as exc:
        raise Http404(str(exc)) from None
    resp = HttpResponse(body, content_type="application/octet-stream")
    resp["X-Attention"] = json.dumps(meta)
    resp["Cache-Control"] = "private, max-age=3600"
    return resp
