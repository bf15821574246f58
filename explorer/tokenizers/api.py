"""The tokenization lab's endpoints: tokenize side by side, train (at once or as a job), import,
download, delete, and BPE merge replay."""
from django.http import Http404, HttpResponse
from ninja import File, Form, Router, Schema, Status
from ninja.files import UploadedFile

from explorer.accounts.api import ErrorOut, team_or_400
from explorer.jobs import services
from explorer.tokenizers import lab

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
        return lab.get_tokenizer(team_or_400(request, team), tokenizer_id)
    except lab.UnknownTokenizer as exc:
        raise Http404(str(exc)) from None


@tokenizer_lab.post("/tokenize", response={200: dict, 400: ErrorOut},
                    summary="Tokenize a text with 1-4 tokenizers side by side: tokens, offsets, metrics, cost ratios")
def tokenize(request, payload: TokenizeIn):
    """``tokenizers``: built-in names ("byte", "char", "minilm-wordpiece") or your team's tokenizer
    ids; ``text``: up to 200,000 characters. Offsets are character positions in ``text``."""
    try:
        return lab.tokenize(team_or_400(request, payload.team), [str(r) for r in payload.tokenizers], payload.text)
    except lab.LabError as exc:
        return _lab_error(exc)


@tokenizer_lab.get("/tokenizers/options", summary="The lab's kinds, normalizations, pre-tokenizers, corpora and built-ins")
def tokenizer_options(request):
    return lab.options()


@tokenizer_lab.get("/tokenizers", summary="Built-in tokenizers and your team's")
def list_tokenizers(request, team: str | None = None):
    return lab.catalogue(team_or_400(request, team))


@tokenizer_lab.post("/tokenizers", response={201: dict, 202: dict, 400: ErrorOut, 429: ErrorOut},
                    summary="Train a tokenizer: at once on a small corpus (201), as a CPU job on a large one (202)")
def train_tokenizer(request, payload: TrainTokenizerIn):
    """``corpus``: a built-in corpus ("stdlib", "synthetic", "multilingual", ``corpus_bytes`` of it),
    ``dataset:<id>`` (one of your team's uploads) or ``text`` (``text`` holds it); ``extra_text`` is
    added to any of them."""
    try:
        tokenizer, job = lab.train(request.user, team_or_400(request, payload.team), payload.dict(exclude={"team", "priority"}),
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
        tokenizer = lab.import_file(request.user, team_or_400(request, team), file, name)
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
        return lab.replay_merges(team_or_400(request, team), tokenizer_id, payload.text, payload.steps)
    except lab.UnknownTokenizer as exc:
        raise Http404(str(exc)) from None
    except lab.LabError as exc:
        return _lab_error(exc)
