"""Uploaded text files: checked (size, UTF-8, not empty) before anything is saved."""
from django.conf import settings
from django.core.files.base import ContentFile

from explorer import services
from explorer.models import Dataset


class DatasetError(ValueError):
    pass


def save_upload(team, user, upload, name=""):
    if upload.size > settings.UPLOAD_MAX_BYTES:
        raise DatasetError(
            f"{upload.name} is {upload.size / 2**20:.1f} MiB; the limit is {settings.UPLOAD_MAX_BYTES / 2**20:.0f} MiB"
        )
    raw = upload.read(settings.UPLOAD_MAX_BYTES + 1)
    if len(raw) > settings.UPLOAD_MAX_BYTES:
        raise DatasetError(f"{upload.name} is larger than {settings.UPLOAD_MAX_BYTES / 2**20:.0f} MiB")
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
