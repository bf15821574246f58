"""Uploaded text files: checked (type, size, UTF-8, not empty) before anything is saved."""
import os

from django.conf import settings
from django.core.files.base import ContentFile

from explorer.datasets.models import Dataset
from explorer.jobs import services


class DatasetError(ValueError):
    pass


# Text formats a corpus comes in; a file without an extension is judged by its bytes alone.
TEXT_EXTENSIONS = (".txt", ".md", ".csv", ".tsv", ".json", ".jsonl", ".py")
# Leading bytes of common binary files, for a message that says what the file is.
MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"%PDF-": "a PDF",
         b"PK\x03\x04": "a zip archive (or .docx, .xlsx)", b"\x1f\x8b": "a gzip archive", b"\x7fELF": "a program"}


def check_type(name, head=b""):
    """Refuse a file whose extension or first bytes (``head``) say it is not text."""
    ext = os.path.splitext(name or "")[1].lower()
    if ext and ext not in TEXT_EXTENSIONS:
        raise DatasetError(f"{name}: only text files can be uploaded ({', '.join(TEXT_EXTENSIONS)}), not {ext}")
    kind = next((what for magic, what in MAGIC.items() if head.startswith(magic)), None)
    if kind is None and b"\x00" in head[:1024]:
        kind = "a binary file (it has NUL bytes)"
    if kind:
        raise DatasetError(f"{name} looks like {kind}, not UTF-8 text; upload a text file")


def save_upload(team, user, upload, name=""):
    check_type(upload.name)
    if upload.size > settings.UPLOAD_MAX_BYTES:
        raise DatasetError(
            f"{upload.name} is {upload.size / 2**20:.1f} MiB; the limit is {settings.UPLOAD_MAX_BYTES / 2**20:.0f} MiB"
        )
    raw = upload.read(settings.UPLOAD_MAX_BYTES + 1)
    if len(raw) > settings.UPLOAD_MAX_BYTES:
        raise DatasetError(f"{upload.name} is larger than {settings.UPLOAD_MAX_BYTES / 2**20:.0f} MiB")
    check_type(upload.name, raw[:1024])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{upload.name} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 and upload again"
        ) from None
    if "\x00" in text:
        raise DatasetError(f"{upload.name} contains NUL bytes: it looks like a binary file, not text")
    if not text.strip():
        raise DatasetError(f"{upload.name} is empty")
    dataset = Dataset(team=team, owner=user, name=services.storable((name or upload.name)[:200]), size_bytes=len(raw), n_chars=len(text))
    dataset.file.save("upload.txt", ContentFile(raw), save=False)
    dataset.save()
    return dataset
