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
    ``{"pretrained": "smollm2-135m-instruct"}`` (a decoder; ``/inference/options`` lists them). Decoders sample continuations (greedy at
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

    from explorer.accounts.teams import get_job_or_404
    from explorer.inference import attention

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
