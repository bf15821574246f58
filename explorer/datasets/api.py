"""Datasets under /api/v1/datasets: a team's uploaded text files."""
from ninja import File, Form, Router, Schema, Status
from ninja.files import UploadedFile

from explorer.accounts.api import ErrorOut, team_or_400
from explorer.datasets.models import Dataset
from explorer.datasets.uploads import DatasetError, save_upload


class DatasetOut(Schema):
    id: int
    name: str
    size_bytes: int
    n_chars: int
    created_at: str


def _dataset_out(d):
    return {"id": d.pk, "name": d.name, "size_bytes": d.size_bytes, "n_chars": d.n_chars, "created_at": d.created_at.isoformat()}


# ---------------------------------------------------------------------------- datasets
datasets = Router(tags=["datasets"])


@datasets.get("", response=list[DatasetOut], summary="Text files uploaded to your team")
def list_datasets(request, team: str | None = None):
    return [_dataset_out(d) for d in Dataset.objects.filter(team=team_or_400(request, team))]


@datasets.post("", response={201: DatasetOut, 400: ErrorOut}, summary="Upload a UTF-8 text file")
def upload_dataset(request, file: File[UploadedFile], name: Form[str] = "", team: Form[str | None] = None):
    try:
        dataset = save_upload(team_or_400(request, team), request.user, file, name)
    except DatasetError as exc:
        return Status(400, {"detail": str(exc), "errors": {"file": str(exc)}})
    return Status(201, _dataset_out(dataset))
