"""Models under /api/v1/models: a team's uploaded GGUF files and transformers directories."""
from django.shortcuts import get_object_or_404
from ninja import File, Form, Router, Schema, Status
from ninja.files import UploadedFile

from explorer.accounts.api import ErrorOut, team_or_400
from explorer.accounts.teams import is_manager
from explorer.jobs import services
from explorer.jobs.api import JobOut
from explorer.pretrained.models import UploadedModel
from explorer.pretrained.uploads import ModelUploadError, delete_model, save_model_upload


class ModelOut(Schema):
    id: int
    key: str  # the inference source: {"pretrained": key}
    name: str
    file_name: str
    format: str
    model_type: str
    parameters: int
    context: int
    chat: bool
    size_bytes: int
    check: dict
    created_at: str


class ImportOut(Schema):
    job: JobOut  # the model-import job converting it


def model_out(m):
    return {"id": m.pk, "key": m.key, "name": m.name, "file_name": m.file_name, "format": m.source_format,
            "model_type": m.model_type, "parameters": m.parameters, "context": m.context, "chat": m.chat,
            "size_bytes": m.size_bytes, "check": m.logits_check, "created_at": m.created_at.isoformat()}


models_router = Router(tags=["models"])


@models_router.get("", response=list[ModelOut], summary="Models uploaded to your team")
def list_models(request, team: str | None = None):
    return [model_out(m) for m in UploadedModel.objects.filter(team=team_or_400(request, team))]


@models_router.post("", response={201: ModelOut, 202: ImportOut, 400: ErrorOut, 429: ErrorOut},
                    summary="Upload a GGUF file or a zipped transformers model directory")
def upload_model(request, file: File[UploadedFile], name: Form[str] = "", team: Form[str | None] = None):
    """A decoder of the families GPT-2, Llama, Mistral, Mixtral or Qwen2: a ``.gguf`` file, or a
    ``.zip`` of the directory ``save_pretrained`` wrote (config.json, safetensors weights,
    tokenizer.json). It is checked before anything is kept (the family, the size against
    ``MODEL_UPLOAD_MAX_BYTES`` and the workers' memory, the weights against the config, our
    logits against transformers' on a probe text: ``check.max_abs_diff``) and converted to our
    decoder; a refusal is a 400 naming the reason under ``errors.file``. Up to
    ``MODEL_UPLOAD_SYNC_MAX_BYTES`` that happens in the request (201, the model); a larger upload
    is converted by a worker: 202 with ``job`` (a "model-import" job: ``/api/v1/jobs/{id}``, its
    events), and the model is listed once the job succeeds. The model is then an inference source
    of your team: ``{"pretrained": key}``."""
    try:
        model, job = save_model_upload(team_or_400(request, team), request.user, file, name)
    except ModelUploadError as exc:
        return Status(400, {"detail": str(exc), "errors": {"file": str(exc)}})
    if job is not None:
        return Status(202, {"job": services.job_to_dict(job, position=services.queue_positions([job])[job.pk])})
    return Status(201, model_out(model))


@models_router.delete("/{model_id}", response={204: None, 403: ErrorOut},
                      summary="Delete an uploaded model (its uploader or a maintainer)")
def remove_model(request, model_id: int, team: str | None = None):
    model = get_object_or_404(UploadedModel, pk=model_id, team=team_or_400(request, team))
    if model.owner_id != request.user.pk and not is_manager(request.user, model.team):
        return Status(403, {"detail": "only its uploader or a team maintainer may delete this model"})
    delete_model(model)
    return Status(204, None)
