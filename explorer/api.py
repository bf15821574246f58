"""REST API under /api/v1/ (django-ninja; OpenAPI schema at /api/v1/openapi.json, docs at
/api/v1/docs). Authenticated by the browser session (with CSRF) or a personal API token sent as
``Authorization: Bearer lae_...``. Every job query goes through ``jobs_visible_to``."""
import csv
import io
import json
from typing import Any

from django.conf import settings
from django.http import Http404, HttpResponse
from ninja import Body, File, Form, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile
from ninja.security import HttpBearer

from explorer.accounts.models import ApiToken
from explorer.accounts.teams import get_job_or_404, jobs_visible_to, resolve_team, user_teams
from explorer.datasets.models import Dataset
from explorer.datasets.uploads import DatasetError, save_upload
from explorer.jobs import services
from explorer.jobs.models import JobEvent
from explorer.scheduling import queue as scheduling
from explorer.tokenizers import lab
from explorer.training import analysis as analysis_service
from explorer.training import checkpoints


class TokenAuth(HttpBearer):
    def authenticate(self, request, token):
        user = ApiToken.authenticate(token)
        if user is not None:
            request.user = user
        return user


# ---------------------------------------------------------------------------- schemas
class JobIn(Schema):
    name: str = ""
    team: str | None = None
    priority: str = "normal"
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    train: dict[str, Any] = {}


class TeamRef(Schema):
    id: int
    name: str


class JobOut(Schema):
    id: int
    name: str
    team: TeamRef
    owner: str
    status: str
    queue: str
    position: int | None
    params: int
    step: int
    total_steps: int
    last_seq: int
    summary: dict[str, Any]
    worker: str
    device: str
    error: str
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None
    spec: dict[str, Any]
    dataset: str | None
    url: str
    attempt: int = 1
    parent: dict[str, Any] | None = None
    priority: str = "normal"
    starts_in_s: float | None = None
    kind: str = "train"


class JobList(Schema):
    count: int
    jobs: list[JobOut]


class EventOut(Schema):
    seq: int
    kind: str
    ts: float
    data: dict[str, Any]


class EventList(Schema):
    job: int
    last_seq: int
    events: list[EventOut]


class ErrorOut(Schema):
    detail: str
    errors: dict[str, str] = {}


class EstimateOut(Schema):
    valid: bool
    errors: dict[str, str]
    analysis: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    queue: str | None = None
    vocab_size: int | None = None


class DatasetOut(Schema):
    id: int
    name: str
    size_bytes: int
    n_chars: int
    created_at: str


def _team(request, ref=None):
    team = resolve_team(request.user, ref, session=getattr(request, "session", None))
    if team is None:
        raise HttpError(400, "You belong to no team; ask an admin to add you to one")
    return team


def _dataset_out(d):
    return {"id": d.pk, "name": d.name, "size_bytes": d.size_bytes, "n_chars": d.n_chars, "created_at": d.created_at.isoformat()}


# ---------------------------------------------------------------------------- jobs
jobs = Router(tags=["jobs"])


@jobs.post("", response={201: JobOut, 400: ErrorOut, 429: ErrorOut}, summary="Submit a training job")
def create_job(request, payload: JobIn):
    team = _team(request, payload.team)
    job = services.create_job(request.user, team, payload.dict(include={"model", "data", "train"}), name=payload.name,
                              priority=payload.priority)
    return Status(201, services.job_to_dict(job, position=services.queue_positions([job])[job.pk]))


@jobs.get("", response={200: JobList, 400: ErrorOut}, summary="Jobs of your teams, newest first; filter and search")
def list_jobs(request, team: str | None = None, status: str | None = None, limit: int = 50, offset: int = 0,
              owner: str | None = None, family: str | None = None, q: str | None = None,
              since: str | None = None, until: str | None = None, kind: str | None = None):
    """``status`` (comma-separated), ``owner`` (username), ``family`` (decoder, encoder,
    encoder_decoder), ``kind`` (train, inference, tokenizer), ``q`` (in the name, or "#12" for a
    job id), ``since`` / ``until`` (dates, YYYY-MM-DD, on the creation time, inclusive)."""
    qs = jobs_visible_to(request.user)
    if team:
        qs = qs.filter(team=_team(request, team))
    try:
        qs = services.search_jobs(qs, status=status, owner=owner, family=family, q=q, since=since, until=until, kind=kind)
    except ValueError as exc:
        return Status(400, {"detail": str(exc)})
    if offset < 0:
        raise HttpError(400, f"offset must be ≥ 0 (got {offset})")
    limit = max(1, min(limit, 200))
    page = list(qs[offset : offset + limit])
    positions = services.queue_positions(page)
    # Written as JSON here rather than through JobList: ninja's validation of 50 plain dicts took a
    # fifth of the request (bench/load.py's quiet figures). job_to_dict's keys are JobOut's, which
    # tests/explorer/jobs/test_api.py checks against the schema.
    body = {"count": qs.count(), "jobs": [services.job_to_dict(j, positions[j.pk]) for j in page]}
    return HttpResponse(json.dumps(body), content_type="application/json")


@jobs.get("/{int:job_id}", response=JobOut, summary="One job")
def get_job(request, job_id: int):
    job = get_job_or_404(request.user, job_id)
    return services.job_to_dict(job, services.queue_positions([job])[job.pk])


@jobs.get("/{int:job_id}/events", response=EventList, summary="A job's events after a sequence number")
def job_events(request, job_id: int, after: int = 0, limit: int = 5000, kind: str | None = None,
               exclude: str | None = None, last: bool = False, brief: bool = False):
    """Events with seq > ``after``, oldest first, at most ``limit``. ``kind`` (comma-separated)
    keeps only those kinds, ``exclude`` leaves them out (``exclude=attention`` skips the large
    attention maps); ``last`` takes the newest ``limit`` instead of the oldest (still in order);
    ``brief`` gives each event's data as just its ``step``: an index of, say, the attention maps
    without their bytes."""
    job = get_job_or_404(request.user, job_id)
    rows = JobEvent.objects.filter(job=job, seq__gt=max(0, after))
    if kind:
        rows = rows.filter(kind__in=kind.split(","))
    if exclude:
        rows = rows.exclude(kind__in=exclude.split(","))
    limit = max(1, min(limit, 20000))
    rows = rows.order_by("-seq" if last else "seq")
    if brief:
        rows = rows.values_list("seq", "kind", "ts", "payload__step")[:limit]
        events = [{"seq": seq, "kind": k, "ts": ts, "data": {"step": step}} for seq, k, ts, step in rows]
    else:
        events = [r.as_message() for r in rows[:limit]]
    if last:
        events.reverse()
    return {"job": job.pk, "last_seq": job.last_seq, "events": events}


EXPORT_STEP_COLUMNS = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "clipped", "spike", "update_ratio")
EXPORT_EVAL_COLUMNS = ("train_loss", "val_loss", "accuracy")


def _csv_cell(value):
    if value is None:
        return ""
    return int(value) if isinstance(value, bool) else value  # clipped / spike as 1 / 0


@jobs.get("/{int:job_id}/export", response={200: None, 400: ErrorOut, 404: ErrorOut},
          summary="Download a job's history as CSV (one row per step) or JSON (its events)")
def export_job(request, job_id: int, format: str = "json", exclude: str | None = "attention"):
    """``format=json``: the job and all its events, oldest first, less the kinds in ``exclude``
    (comma-separated; by default the large attention maps; ``exclude=`` keeps everything).
    ``format=csv``: one row per logged step (columns ``EXPORT_STEP_COLUMNS``; clipped and spike as
    1 / 0), with the evaluation at that step merged in (``EXPORT_EVAL_COLUMNS``); a missing value is
    an empty cell."""
    job = get_job_or_404(request.user, job_id)
    if format not in ("csv", "json"):
        return Status(400, {"detail": f"unknown format '{format}'; choose from ['csv', 'json']",
                            "errors": {"format": "choose csv or json"}})
    rows = JobEvent.objects.filter(job=job).order_by("seq")
    if format == "json":
        if exclude:
            rows = rows.exclude(kind__in=exclude.split(","))
        body = json.dumps({"job": services.job_to_dict(job), "events": [r.as_message() for r in rows]})
        response = HttpResponse(body, content_type="application/json")
    else:
        by_step: dict[int, dict] = {}
        for kind, data in rows.filter(kind__in=("step", "eval")).values_list("kind", "payload"):
            columns = EXPORT_STEP_COLUMNS if kind == "step" else EXPORT_EVAL_COLUMNS
            by_step.setdefault(data["step"], {}).update({c: data.get(c) for c in columns})
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        header = EXPORT_STEP_COLUMNS + EXPORT_EVAL_COLUMNS
        writer.writerow(header)
        for step in sorted(by_step):
            values = {**by_step[step], "step": step}
            writer.writerow([_csv_cell(values.get(c)) for c in header])
        response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}.{format}"'
    return response


@jobs.post("/{int:job_id}/cancel", response={200: JobOut, 403: ErrorOut, 409: ErrorOut}, summary="Cancel a queued or running job")
def cancel_job(request, job_id: int):
    job = get_job_or_404(request.user, job_id)
    try:
        scheduling.check_can_act(request.user, job, "cancel")
    except scheduling.NotAllowed as exc:
        return Status(403, {"detail": str(exc)})
    if not services.cancel_job(job):
        return Status(409, {"detail": f"Job {job.pk} has already ended ({job.status})"})
    job.refresh_from_db()
    return services.job_to_dict(job, services.queue_positions([job])[job.pk])


@jobs.post("/{int:job_id}/retry", response={200: JobOut, 403: ErrorOut, 409: ErrorOut},
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


class PriorityIn(Schema):
    priority: str


@jobs.post("/{int:job_id}/priority", response={200: JobOut, 400: ErrorOut, 403: ErrorOut, 409: ErrorOut},
           summary="Change a queued job's priority (low, normal; high for maintainers)")
def set_priority(request, job_id: int, payload: PriorityIn):
    job = get_job_or_404(request.user, job_id)
    try:
        scheduling.set_priority(request.user, job, payload.priority)
    except ValueError as exc:
        return Status(400, {"detail": str(exc), "errors": {"priority": str(exc)}})
    except scheduling.NotAllowed as exc:
        return Status(403 if job.status == "queued" else 409, {"detail": str(exc)})
    job.refresh_from_db()
    return services.job_to_dict(job, services.queue_positions([job])[job.pk])


@jobs.post("/{int:job_id}/move-to-top", response={200: JobOut, 403: ErrorOut, 409: ErrorOut},
           summary="Put a queued job first among those of its priority (maintainers)")
def move_to_top(request, job_id: int):
    job = get_job_or_404(request.user, job_id)
    try:
        scheduling.move_to_top(request.user, job)
    except scheduling.NotAllowed as exc:
        return Status(403 if job.status == "queued" else 409, {"detail": str(exc)})
    job.refresh_from_db()
    return services.job_to_dict(job, services.queue_positions([job])[job.pk])


class CheckpointOut(Schema):
    step: int
    bytes: int
    created_at: str
    download_url: str
    transformers_url: str


@jobs.get("/{int:job_id}/checkpoints", response=list[CheckpointOut], summary="A job's saved checkpoints, oldest first")
def list_checkpoints(request, job_id: int):
    job = get_job_or_404(request.user, job_id)
    base = f"/api/v1/jobs/{job.pk}/checkpoints"
    return [{**c, "download_url": f"{base}/{c['step']}/download", "transformers_url": f"{base}/{c['step']}/transformers"}
            for c in checkpoints.checkpoints(job)]


def _zip_response(body, filename):
    response = HttpResponse(body, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@jobs.get("/{int:job_id}/checkpoints/{int:step}/download", response={200: None, 404: ErrorOut},
          summary="A checkpoint as a zip: model.safetensors, optimizer.safetensors, trainer.json")
def download_checkpoint(request, job_id: int, step: int):
    job = get_job_or_404(request.user, job_id)
    try:
        return _zip_response(checkpoints.zip_checkpoint(job, step), f"job-{job.pk}-step-{step}.zip")
    except checkpoints.NoCheckpoint as exc:
        raise Http404(str(exc)) from None


@jobs.get("/{int:job_id}/checkpoints/{int:step}/transformers", response={200: None, 400: ErrorOut, 404: ErrorOut},
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


@jobs.get("/{int:job_id}/attention/region", response={200: dict[str, Any], 400: ErrorOut, 404: ErrorOut},
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
    return services.composer_options(_team(request, team))


@composer.post("/estimate", response=EstimateOut, summary="Validate a job spec and analyse its cost")
def estimate(request, payload: JobIn):
    return services.estimate(_team(request, payload.team), payload.dict(include={"model", "data", "train"}))


# ---------------------------------------------------------------------------- datasets
datasets = Router(tags=["datasets"])


@datasets.get("", response=list[DatasetOut], summary="Text files uploaded to your team")
def list_datasets(request, team: str | None = None):
    return [_dataset_out(d) for d in Dataset.objects.filter(team=_team(request, team))]


@datasets.post("", response={201: DatasetOut, 400: ErrorOut}, summary="Upload a UTF-8 text file")
def upload_dataset(request, file: File[UploadedFile], name: Form[str] = "", team: Form[str | None] = None):
    try:
        dataset = save_upload(_team(request, team), request.user, file, name)
    except DatasetError as exc:
        return Status(400, {"detail": str(exc), "errors": {"file": str(exc)}})
    return Status(201, _dataset_out(dataset))


# ---------------------------------------------------------------------------- real models
presets = Router(tags=["presets"])


@presets.get("/presets", summary="Real models (GPT-2, Llama, Mistral, Mixtral, BERT, T5...) as engine configs")
def list_presets(request):
    return services.list_presets()


@presets.get("/presets/{name}", summary="One real model's engine config and parameter counts")
def get_preset(request, name: str):
    try:
        return services.get_preset(name)
    except KeyError as exc:
        raise Http404(exc.args[0]) from None


@presets.post("/import/hf-config", response={200: dict, 400: ErrorOut},
              summary="Turn a Hugging Face config.json into an engine config")
def import_hf_config(request, payload: Body[dict[str, Any]]):
    return services.import_hf_config(payload)


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


# ---------------------------------------------------------------------------- tokenization lab
tokenizer_lab = Router(tags=["tokenizers"])


class TokenizeIn(Schema):
    tokenizers: list[str | int] = []
    text: str = ""
    team: str | None = None


class TrainTokenizerIn(Schema):
    name: str = ""
    team: str | None = None
    priority: str = "normal"  # when it runs as a job: low, normal (high: maintainers)
    kind: str = "bpe"
    vocab_size: int = 1000
    normalization: str = "nfc"
    lowercase: bool = False
    pre_tokenizer: str | None = None
    special_tokens: list[str] | str = []
    corpus: str = "synthetic"
    corpus_bytes: int = 1_000_000
    text: str = ""
    extra_text: str = ""


class MergesIn(Schema):
    text: str
    steps: list[int]


def _lab_error(exc, status=400):
    errors = {exc.field: str(exc)} if exc.field else {}
    return Status(status, {"detail": str(exc), "errors": errors})


def _lab_tokenizer(request, tokenizer_id, team=None):
    try:
        return lab.get_tokenizer(_team(request, team), tokenizer_id)
    except lab.UnknownTokenizer as exc:
        raise Http404(str(exc)) from None


@tokenizer_lab.post("/tokenize", response={200: dict, 400: ErrorOut},
                    summary="Tokenize a text with 1-4 tokenizers side by side: tokens, offsets, metrics, cost ratios")
def tokenize(request, payload: TokenizeIn):
    """``tokenizers``: built-in names ("byte", "char", "minilm-wordpiece") or your team's tokenizer
    ids; ``text``: up to 200,000 characters. Offsets are character positions in ``text``."""
    try:
        return lab.tokenize(_team(request, payload.team), [str(r) for r in payload.tokenizers], payload.text)
    except lab.LabError as exc:
        return _lab_error(exc)


@tokenizer_lab.get("/tokenizers/options", summary="The lab's kinds, normalizations, pre-tokenizers, corpora and built-ins")
def tokenizer_options(request):
    return lab.options()


@tokenizer_lab.get("/tokenizers", summary="Built-in tokenizers and your team's")
def list_tokenizers(request, team: str | None = None):
    return lab.catalogue(_team(request, team))


@tokenizer_lab.post("/tokenizers", response={201: dict, 202: dict, 400: ErrorOut, 429: ErrorOut},
                    summary="Train a tokenizer: at once on a small corpus (201), as a CPU job on a large one (202)")
def train_tokenizer(request, payload: TrainTokenizerIn):
    """``corpus``: a built-in corpus ("stdlib", "synthetic", "multilingual", ``corpus_bytes`` of it),
    ``dataset:<id>`` (one of your team's uploads) or ``text`` (``text`` holds it); ``extra_text`` is
    added to any of them."""
    try:
        tokenizer, job = lab.train(request.user, _team(request, payload.team), payload.dict(exclude={"team", "priority"}),
                                   priority=payload.priority)
    except lab.LabError as exc:
        return _lab_error(exc)
    if job is None:
        return Status(201, lab.tokenizer_to_dict(tokenizer))
    return Status(202, {"tokenizer": lab.tokenizer_to_dict(tokenizer),
                        "job": services.job_to_dict(job, services.queue_positions([job])[job.pk])})


@tokenizer_lab.post("/tokenizers/import", response={201: dict, 400: ErrorOut},
                    summary="Import a tokenizer.json (Hugging Face tokenizers) or a SentencePiece .model")
def import_tokenizer(request, file: File[UploadedFile], name: Form[str] = "", team: Form[str | None] = None):
    try:
        tokenizer = lab.import_file(request.user, _team(request, team), file, name)
    except lab.LabError as exc:
        return _lab_error(exc)
    return Status(201, lab.tokenizer_to_dict(tokenizer))


@tokenizer_lab.get("/tokenizers/{int:tokenizer_id}", response={200: dict, 404: ErrorOut},
                   summary="One of your team's tokenizers, with its number of merges (BPE)")
def get_tokenizer(request, tokenizer_id: int, team: str | None = None):
    try:
        return lab.describe(_lab_tokenizer(request, tokenizer_id, team))
    except lab.LabError as exc:
        return _lab_error(exc)


@tokenizer_lab.get("/tokenizers/{int:tokenizer_id}/download", summary="The tokenizer's file (tokenizer.json or .model)")
def download_tokenizer(request, tokenizer_id: int, team: str | None = None):
    tokenizer = _lab_tokenizer(request, tokenizer_id, team)
    try:
        data, filename = lab.download(tokenizer)
    except lab.LabError as exc:
        return _lab_error(exc, status=409)
    response = HttpResponse(data, content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@tokenizer_lab.delete("/tokenizers/{int:tokenizer_id}", response={204: None, 404: ErrorOut},
                      summary="Delete a tokenizer (cancels its training job if it is still running)")
def delete_tokenizer(request, tokenizer_id: int, team: str | None = None):
    lab.delete(_lab_tokenizer(request, tokenizer_id, team))
    return Status(204, None)


@tokenizer_lab.post("/tokenizers/{int:tokenizer_id}/merges", response={200: dict, 400: ErrorOut, 404: ErrorOut},
                    summary="BPE merge replay: how a text splits after the first N merges, for each N in steps")
def merge_replay(request, tokenizer_id: int, payload: MergesIn, team: str | None = None):
    try:
        return lab.replay_merges(_team(request, team), tokenizer_id, payload.text, payload.steps)
    except lab.UnknownTokenizer as exc:
        raise Http404(str(exc)) from None
    except lab.LabError as exc:
        return _lab_error(exc)


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
    quantization: list[str] = []
    group_size: int = 32
    top_alternatives: int = 5


@inference.post("/inference", response={201: JobOut, 400: ErrorOut, 429: ErrorOut},
                summary="Run prompts through a checkpoint or a pretrained model, as a job")
def create_inference_job(request, payload: InferenceIn):
    """``source``: ``{"job": id, "step": n}`` (a training job of your team; the latest checkpoint
    without ``step``) or ``{"pretrained": "minilm"}``. Decoders sample continuations (greedy at
    temperature 0, then top-k, top-p, stop strings, seed), measured with and without the KV cache
    (``compare_cache``); ``quantization`` (decoders only) adds a table of perplexity, size and speed
    per method. Encoders give the prompts' embedding similarities. The job's events (``/jobs/{id}/
    events``): "progress", "generation", "quantization", "end"."""
    from explorer.inference import jobs as inference_jobs

    team = _team(request, payload.team)
    job = inference_jobs.create_inference_job(request.user, team, payload.dict(exclude={"name", "team", "priority"}),
                                              name=payload.name, priority=payload.priority)
    return Status(201, services.job_to_dict(job, position=services.queue_positions([job])[job.pk]))


@inference.get("/inference/options", summary="What an inference job can start from, and its settings' limits")
def inference_options(request, team: str | None = None):
    from explorer.inference import jobs as inference_jobs

    return inference_jobs.options(_team(request, team))


account = Router(tags=["account"])


@account.get("/me", summary="Who you are and your teams")
def me(request):
    return {
        "username": request.user.get_username(),
        "teams": [{"id": t.pk, "name": t.name, "slug": t.slug} for t in user_teams(request.user)],
        "upload_max_bytes": settings.UPLOAD_MAX_BYTES,
    }


# ---------------------------------------------------------------------------- workers
workers_router = Router(tags=["workers"])


@workers_router.get("", summary="The registered workers: device, queues, current job, utilisation, heartbeat")
def list_workers(request):
    """Every worker; a current job of another team shows only as ``{"busy": true}``.
    ``can_manage``: whether you may drain them (staff, maintainers and admins of a shared team)."""
    from explorer.scheduling import workers

    return workers.workers_for(request.user)


def _set_draining(request, name, draining):
    from explorer.scheduling import workers
    from explorer.scheduling.models import Worker

    worker = Worker.objects.filter(name=name).first()
    if worker is None:
        raise Http404(f"no worker {name!r}")
    try:
        worker = workers.set_draining(request.user, worker, draining)
    except workers.NotAllowed as exc:
        return Status(403, {"detail": str(exc)})
    team_ids = set(user_teams(request.user).values_list("pk", flat=True))
    return workers.worker_to_dict(worker, team_ids)


@workers_router.post("/{name}/drain", response={200: dict, 403: ErrorOut, 404: ErrorOut},
                     summary="Drain a worker: it finishes its current job and takes no new one")
def drain_worker(request, name: str):
    return _set_draining(request, name, True)


@workers_router.post("/{name}/undrain", response={200: dict, 403: ErrorOut, 404: ErrorOut},
                     summary="Undrain a worker: it takes jobs from its queues again")
def undrain_worker(request, name: str):
    return _set_draining(request, name, False)


# ---------------------------------------------------------------------------- the event contract
events_router = Router(tags=["jobs"])


@events_router.get("/schema", response=dict[str, Any], summary="The events a job emits, as JSON Schema")
def event_schema(request):
    """Every event kind of ``GET /api/v1/jobs/{id}/events`` and the job's websocket, with its keys
    and their types: a JSON Schema (draft 2020-12) built from ``engine.config.events``' definitions. An
    event's ``data`` is the schema's object without its ``kind``; ``x-kinds`` says which jobs
    emit each kind and which keys the job's ``summary`` keeps."""
    from engine.config.events import event_schema as schema

    return schema()
