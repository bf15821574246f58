"""Uploads are limited in size and type: datasets through the API and the page, and the
tokenization lab's imports (which have their own size check)."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from explorer.datasets.models import Dataset
from explorer.datasets.uploads import TEXT_EXTENSIONS
from explorer.tokenizers.models import Tokenizer

pytestmark = pytest.mark.django_db

TEXT = "the quick brown fox — naïve café\n".encode() * 10


def via_api(client, name, data):
    resp = client.post("/api/v1/datasets", {"file": SimpleUploadedFile(name, data)})
    return resp.status_code, resp.json().get("detail", "")


def via_page(client, name, data):
    resp = client.post("/datasets/", {"file": SimpleUploadedFile(name, data)})
    if resp.status_code == 302:
        return 201, ""
    return 400, " ".join(resp.context["form"].errors.get("file", []))


ROUTES = {"api": via_api, "page": via_page}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("ext", TEXT_EXTENSIONS + ("",))
def test_text_files_are_accepted(alice_client, route, ext):
    assert ROUTES[route](alice_client, f"corpus{ext}", TEXT)[0] == 201
    assert Dataset.objects.get().size_bytes == len(TEXT)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name, data, words", [
    ("photo.png", TEXT, ["only text files", ".png", ".txt"]),  # by its name, whatever is inside
    ("model.safetensors", TEXT, ["only text files", ".safetensors"]),
    ("photo.txt", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, ["PNG image", "not UTF-8"]),  # by its bytes
    ("paper.txt", b"%PDF-1.7\n" + TEXT, ["a PDF"]),
    ("archive.txt", b"PK\x03\x04" + TEXT, ["zip archive"]),
    ("data.csv", b"a,b\n" + b"\x00\x01\x02" * 10 + TEXT, ["binary file", "NUL"]),  # a NUL in the first KB
    ("latin1.txt", "café".encode("latin-1") * 10, ["not UTF-8", "0xe9"]),
    ("blank.txt", b"  \n\t\n", ["empty"]),
])
def test_wrong_types_are_refused_with_a_reason(alice_client, route, name, data, words):
    status, message = ROUTES[route](alice_client, name, data)
    assert status == 400
    for word in words:
        assert word in message, message
    assert Dataset.objects.count() == 0


def test_a_nul_past_the_first_kilobyte_is_still_refused(alice_client):
    status, message = via_api(alice_client, "late.txt", TEXT * 10 + b"\x00" + TEXT)
    assert status == 400 and "NUL" in message


def test_an_empty_file_is_refused(alice_client):
    assert via_api(alice_client, "empty.txt", b"") == (400, "empty.txt is empty")
    status, message = via_page(alice_client, "empty.txt", b"")
    assert status == 400 and "empty" in message  # Django's form says so before we see it


@pytest.mark.parametrize("route", ROUTES)
def test_the_size_limit(alice_client, settings, route):
    settings.UPLOAD_MAX_BYTES = 100
    assert ROUTES[route](alice_client, "fits.txt", b"x" * 100)[0] == 201
    status, message = ROUTES[route](alice_client, "big.txt", b"x" * 101)
    assert status == 400 and "limit" in message and "big.txt" in message
    assert Dataset.objects.count() == 1


def test_tokenizer_imports_refuse_a_file_over_the_limit(alice_client, settings):
    settings.UPLOAD_MAX_BYTES = 1000
    resp = alice_client.post("/api/v1/tokenizers/import", {"file": SimpleUploadedFile("tokenizer.json", b"{" + b" " * 2000 + b"}")})
    assert resp.status_code == 400 and "limit" in resp.json()["detail"]
    assert resp.json()["errors"] == {"file": resp.json()["detail"]}
    assert Tokenizer.objects.count() == 0
