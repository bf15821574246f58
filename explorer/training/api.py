"""Training's endpoints: the composer's options and estimate, real-model presets and HF config
import, the cost analysis, and a training job's checkpoints (download, transformers export, retry
from the last one) and attention detail under /api/v1/jobs/{id}/."""
from typing import Any

from django.http import Http404, HttpResponse
from ninja import Body, Router, Schema, Status

from explorer.accounts.api import ErrorOut, team_or_400
from explorer.jobs import queue as scheduling
from explorer.jobs import services
from explorer.jobs.access import get_job_or_404
from explorer.jobs.api import JobIn, JobOut
from explorer.training import analysis as analysis_service
from explorer.training import checkpoints
from explorer.training import finetune as ft
from explorer.training import jobs as training_jobs


class EstimateOut(Schema):
    valid: bool
    errors: dict[str, str]
    analysis: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    queue: str | None = None
    vocab_size: int | None = None


# ---------------------------------------------------------------------------- a job's checkpoints
job_routes = Router(tags=["jobs"])


@job_routes.post("/{int:job_id}/retry", response={200: JobOut, 403: ErrorOut, 409: ErrorOut},
           summary="Queue a failed or cancelled job again, resuming from its last checkpoint")
def retry_job(request, job_id: int):
    """A new attempt of the same job: it goes on from its last checkpoint (same loss curve, same
    event log) or, without one, starts over. 409 for a job that is queued, running or succeeded."""
    job = get_job_or_404(request.user, job_id)
    try:
        scheduling.check_can_act(request.user, job, "retry")
        checkpoints.retry_job(job, reason=f"retried by {request.user.get_username()}")
    except scheduling.NotAllowed as exc:
        return Status(403, {"detail": str(exc)})
    except checkpoints.RetryRefused as exc:
        return Status(409, {"detail": str(exc)})
    job.refresh_from_db()
    return services.job_to_dict(job, services.queue_positions([job])[job.pk])


class CheckpointOut(Schema):
    step: int
    bytes: int
    created_at: str
    download_url: str
    transformers_url: str


@job_routes.get("/{int:job_id}/checkpoints", response=list[CheckpointOut], summary="A job's saved checkpoints, oldest first")
def list_checkpoints(request, job_id: int):
    job = get_job_or_404(request.user, job_id)
    base = f"/api/v1/jobs/{job.pk}/checkpoints"
    return [{**c, "download_url": f"{base}/{c['step']}/download", "transformers_url": f"{base}/{c['step']}/transformers"}
            for c in checkpoints.checkpoints(job)]


def _zip_response(body, filename):
    response = HttpResponse(body, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@job_routes.get("/{int:job_id}/checkpoints/{int:step}/download", response={200: None, 404: ErrorOut},
          summary="A checkpoint as a zip: model.safetensors, optimizer.safetensors, trainer.json")
def download_checkpoint(request, job_id: int, step: int):
    job = get_job_or_404(request.user, job_id)
    try:
        return _zip_response(checkpoints.zip_checkpoint(job, step), f"job-{job.pk}-step-{step}.zip")
    except checkpoints.NoCheckpoint as exc:
        raise Http404(str(exc)) from None


@job_routes.get("/{int:job_id}/checkpoints/{int:step}/transformers", response={200: None, 400: ErrorOut, 404: ErrorOut},
          summary="A checkpoint exported as a transformers model directory (save_pretrained), zipped")
def export_checkpoint(request, job_id: int, step: int):
    """``AutoModelForCausalLM.from_pretrained(<unzipped dir>)`` loads it (GPT-2, Llama, Mistral,
    Mixtral, BERT or T5, whichever expresses the architecture); 400 says why none does."""
    job = get_job_or_404(request.user, job_id)
    try:
        body = checkpoints.zip_transformers(job, step)
    except checkpoints.NoCheckpoint as exc:
        raise Http404(str(exc)) from None
    except ValueError as exc:
        return Status(400, {"detail": str(exc)})
    return _zip_response(body, f"job-{job.pk}-step-{step}-transformers.zip")


@job_routes.get("/{int:job_id}/attention/region", response={200: dict[str, Any], 400: ErrorOut, 404: ErrorOut},
          summary="One head's attention on a region of a long input, recomputed from a checkpoint")
def attention_region(request, job_id: int, step: int | None = None, stack: str = "self", layer: int = 0,
                     head: int = 0, q0: int = 0, q1: int | None = None, k0: int = 0, k1: int | None = None,
                     cells: int = 128):
    """Queries ``q0..q1`` × keys ``k0..k1`` (defaults: all) of one head of the attention event at
    ``step`` (default the newest), pooled to at most ``cells`` per side (≤ 256), recomputed from
    that step's weights (a checkpoint, or the weights kept for that evaluation), else from the
    nearest kept within ``checkpoint_every`` steps, marked ``exact: false`` with a ``note``; 404
    when none is kept. Only events of long inputs (with an overview) have detail. See ``explorer.training.attention_detail.region`` for the answer's fields."""
    from explorer.training import attention_detail  # torch work in the web process: loaded on first use

    job = get_job_or_404(request.user, job_id)
    try:
        return attention_detail.region(job, step=step, stack=stack, layer=layer, head=head, q0=q0, q1=q1,
                                       k0=k0, k1=k1, cells=cells)
    except attention_detail.BadRegion as exc:
        return Status(400, {"detail": f"Invalid region: {exc}", "errors": exc.errors})
    except attention_detail.NoRegion as exc:
        raise Http404(str(exc)) from None


# ---------------------------------------------------------------------------- composer helpers
composer = Router(tags=["composer"])


@composer.get("/options", summary="Fields, registry choices and datasets for the composer")
def options(request, team: str | None = None):
    return training_jobs.composer_options(team_or_400(request, team))


@composer.post("/estimate", response=EstimateOut, summary="Validate a job spec and analyse its cost")
def estimate(request, payload: JobIn):
    return training_jobs.estimate(team_or_400(request, payload.team), payload.dict(include={"model", "data", "train"}))


# ---------------------------------------------------------------------------- real models
presets = Router(tags=["presets"])


@presets.get("/presets", summary="Real models (GPT-2, Llama, Mistral, Mixtral, BERT, T5...) as engine configs")
def list_presets(request):
    return training_jobs.list_presets()


@presets.get("/presets/{name}", summary="One real model's engine config and parameter counts")
def get_preset(request, name: str):
    try:
        return training_jobs.get_preset(name)
    except KeyError as exc:
        raise Http404(exc.args[0]) from None


@presets.post("/import/hf-config", response={200: dict, 400: ErrorOut},
              summary="Turn a Hugging Face config.json into an engine config")
def import_hf_config(request, payload: Body[dict[str, Any]]):
    return training_jobs.import_hf_config(payload)


# ---------------------------------------------------------------------------- analysis
analysis = Router(tags=["analysis"])


class AnalyzeIn(Schema):
    model: dict[str, Any] = {}
    settings: dict[str, Any] = {}


@analysis.post("/analyze", response={200: dict, 400: ErrorOut},
               summary="What a model costs to train and serve: parameters, FLOPs, memory, KV cache, fit on each device")
def analyze(request, payload: AnalyzeIn):
    """``model``: engine config fields, or ``{"preset": "llama-2-7b", ...overrides}``; real-model
    sizes are accepted. ``settings``: batch_size, seq_len, vocab_size, dtype, optimizer, n_gpus,
    sharding, activation_checkpointing, flash_attention, quantization, hardware, mfu,
    price_per_gpu_hour, train_tokens. Returns the engine's report plus ``curves`` (KV cache and
    attention FLOPs against context for every attention pattern) and ``fit_table`` (every device)."""
    try:
        return analysis_service.report(payload.dict())
    except services.SpecError as exc:
        return Status(400, {"detail": "Invalid analysis", "errors": exc.errors})


@analysis.get("/analyze/options", summary="The analysis settings' choices and the device catalogue")
def analyze_options(request):
    return analysis_service.options()


# ---------------------------------------------------------------------------- fine-tuning
finetune = Router(tags=["finetune"])


class FinetuneIn(Schema):
    name: str = ""
    team: str | None = None
    priority: str = "normal"  # low, normal (high: maintainers)
    base: str = "smollm2-135m-instruct"
    objective: str = "sft"
    method: str = "lora"
    lora: dict[str, Any] = {}
    data: dict[str, Any] = {}
    train: dict[str, Any] = {}
    prompts: Any = None
    max_new_tokens: Any = 48


@finetune.post("/finetune", response={201: JobOut, 400: ErrorOut, 429: ErrorOut},
               summary="Fine-tune SmolLM2-135M-Instruct (SFT or DPO, LoRA or all weights), as a job")
def create_finetune_job(request, payload: FinetuneIn):
    """``objective``: "sft" or "dpo"; ``method``: "lora" (``lora``: ``rank`` ≥ 1, ``alpha`` > 0,
    ``dropout`` in [0, 1), ``target_modules`` among q/k/v/o/gate/up/down_proj) or "full";
    ``data``: ``{"source": "builtin"}`` (the built-in instruction set), ``"synthetic"`` with a
    ``task``, or ``"jsonl"`` with a ``dataset`` id of your team's uploads; ``max_tokens``;
    ``train``: steps, lr, batch_size, warmup_steps, weight_decay, grad_clip, schedule, min_lr_ratio,
    eval_interval, seed, dpo_beta, device; ``prompts`` answered before and after. A bad value is a
    400 naming its field. The job's events: "start", "answers" (before), "step", "eval",
    "adapter", "answers" (after), "end"; its files: ``/jobs/{id}/finetune``."""
    team = team_or_400(request, payload.team)
    body = payload.dict(exclude={"name", "team", "priority"})
    if body["prompts"] is None:
        body.pop("prompts")
    job = ft.create_job(request.user, team, body, name=payload.name, priority=payload.priority)
    return Status(201, services.job_to_dict(job, position=services.queue_positions([job])[job.pk]))


@finetune.get("/finetune/options", summary="A fine-tuning job's choices, defaults and limits")
def finetune_options(request, team: str | None = None):
    return ft.options(team_or_400(request, team))


@job_routes.get("/{int:job_id}/finetune", response={200: dict[str, Any], 404: ErrorOut},
                summary="What a fine-tuning job saved, and its downloads")
def finetune_saved(request, job_id: int):
    job = get_job_or_404(request.user, job_id)
    found = ft.saved(job) if job.kind == ft.KIND else None
    if found is None:
        raise Http404(f"{job.display_name} has saved no adapter")
    base = f"/api/v1/jobs/{job.pk}/finetune"
    exports = [e for e in ft.EXPORTS if found["method"] == "lora" or e != "peft"]
    return {**found, "downloads": {e: {"url": f"{base}/{e}", "what": ft.EXPORTS[e]} for e in exports}}


@job_routes.get("/{int:job_id}/finetune/{what}", response={200: None, 400: ErrorOut, 404: ErrorOut},
                summary="A fine-tuning job's adapter, merged transformers model or PEFT adapter, zipped")
def finetune_download(request, job_id: int, what: str):
    """``what``: "adapter" (the files as saved), "merged" (``AutoModelForCausalLM.from_pretrained``
    loads the unzipped folder) or "peft" (``PeftModel.from_pretrained(LlamaForCausalLM(base
    config), folder)``; LoRA only)."""
    job = get_job_or_404(request.user, job_id)
    if job.kind != ft.KIND:
        raise Http404(f"{job.display_name} is not a fine-tuning job")
    try:
        body, filename = ft.zip_export(job, what)
    except checkpoints.NoCheckpoint as exc:
        raise Http404(str(exc)) from None
    except ValueError as exc:
        return Status(400, {"detail": str(exc)})
    return _zip_response(body, filename)
