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
