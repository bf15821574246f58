"""Pages: login required, the composer form's messages, uploads, team isolation."""
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from explorer.accounts.models import ApiToken
from explorer.datasets.models import Dataset
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db


def form_data(spec, **extra):
    data = {f"{section}.{key}": value for section, values in spec.items() for key, value in values.items()}
    data.update(extra)
    return data


@pytest.mark.parametrize("url", ["/compose/", "/queue/", "/datasets/", "/models/", "/account/", "/jobs/1/"])
def test_pages_require_login(client, url):
    resp = client.get(url)
    assert resp.status_code == 302 and resp["Location"].startswith("/login/")


def test_compose_page_lists_engine_options(alice_client):
    import engine

    html = alice_client.get("/compose/").content.decode()
    for choice in engine.choices()["task"] + engine.choices()["norm"]:
        assert f'value="{choice}"' in html
    assert 'id="composer-options"' in html


def test_compose_prefills_from_the_query_string(alice_client):
    html = alice_client.get("/compose/?model.n_layer=7").content.decode()
    assert 'value="7"' in html


def test_compose_shows_field_errors_and_queues_nothing(alice_client, tiny_spec):
    tiny_spec["model"]["n_head"] = 3
    resp = alice_client.post("/compose/", form_data(tiny_spec))
    assert resp.status_code == 200
    errors = resp.context["form"].errors
    assert "model.n_head" in errors and "16" in errors["model.n_head"][0]
    assert Job.objects.count() == 0


def test_compose_launches_a_job(alice_client, alice, tiny_spec):
    resp = alice_client.post("/compose/", form_data(tiny_spec, name="from the form"))
    job = Job.objects.get()
    assert resp.status_code == 302 and resp["Location"] == f"/jobs/{job.pk}/"
    assert job.name == "from the form" and job.owner == alice[0]
    page = alice_client.get(resp["Location"])
    assert page.status_code == 200 and b"from the form" in page.content
    assert alice_client.get("/queue/").content.count(b"from the form") >= 1


def test_compose_with_an_uploaded_text(alice_client, alice, tiny_spec):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    alice_client.post("/datasets/", {"file": SimpleUploadedFile("fox.txt", text.encode())})
    dataset = Dataset.objects.get()
    assert dataset.n_chars == len(text)
    tiny_spec["data"] = {"source": "text", "tokenizer": "char", "dataset": dataset.pk}
    resp = alice_client.post("/compose/", form_data(tiny_spec))
    assert resp.status_code == 302, resp.context["form"].errors
    job = Job.objects.get()
    assert job.dataset == dataset and job.spec["data"]["path"] == dataset.file.path
    # Context longer than the data: refused with the numbers, in the form.
    tiny_spec["model"]["block_size"] = 4096
    resp = alice_client.post("/compose/", form_data(tiny_spec))
    assert resp.status_code == 200 and "model.block_size" in resp.context["form"].errors


def test_dataset_upload_refuses_non_utf8(alice_client):
    resp = alice_client.post("/datasets/", {"file": SimpleUploadedFile("bin.txt", b"\x89PNG\r\n\x1a\n\xff")})
    assert resp.status_code == 200 and "not UTF-8" in str(resp.context["form"].errors["file"])
    assert Dataset.objects.count() == 0


def test_other_teams_dataset_is_refused(alice_client, bob, tiny_spec):
    from explorer.datasets.uploads import save_upload

    theirs = save_upload(bob[1], bob[0], SimpleUploadedFile("b.txt", b"bob's words " * 100))
    tiny_spec["data"] = {"source": "text", "dataset": theirs.pk}
    resp = alice_client.post("/compose/", form_data(tiny_spec))
    assert resp.status_code == 200 and Job.objects.count() == 0


def test_account_issues_a_token_once(alice_client, alice):
    resp = alice_client.post("/account/", {"name": "laptop", "team": alice[1].pk})
    raw = resp.context["new_token"]
    assert raw.startswith("lae_") and ApiToken.authenticate(raw) == alice[0]
    assert raw not in alice_client.get("/account/").content.decode()


def test_signup_creates_a_personal_team(client):
    resp = client.post("/signup/", {"username": "carol", "password1": "a-long-pass-123", "password2": "a-long-pass-123"})
    assert resp.status_code == 302
    from explorer.accounts.models import Team

    assert Team.objects.filter(memberships__user__username="carol").count() == 1


def test_shared_link_with_a_false_boolean_renders_unchecked(alice_client):
    html = alice_client.get("/compose/?model.bias=false").content.decode()
    tag = next(t for t in html.split("<input") if 'name="model.bias"' in t)
    assert "checked" not in tag.split(">")[0]


def test_cancel_and_team_switch_do_not_redirect_off_site(alice_client, alice, tiny_spec):

    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    resp = alice_client.post(f"/jobs/{job.pk}/cancel/", {"next": "https://evil.example/"})
    assert resp["Location"] == f"/jobs/{job.pk}/"
    resp = alice_client.post("/teams/switch/", {"team": alice[1].pk, "next": "//evil.example/"})
    assert resp["Location"] == "/queue/"
    resp = alice_client.post("/teams/switch/", {"team": alice[1].pk, "next": "/compose/"})
    assert resp["Location"] == "/compose/"


@pytest.mark.parametrize("url", ["/", "/compose/", "/compare/", "/queue/", "/runs/", "/workers/", "/datasets/",
                                 "/tokenizers/", "/models/", "/inference/", "/account/", "/team/"])
def test_pages_show_no_template_syntax(alice_client, alice, tiny_spec, url):
    """A template comment or tag that Django did not parse (a {# #} comment over two lines, say)
    would be shown to the user as text."""
    training_jobs.create_job(alice[0], alice[1], tiny_spec, name="a job")
    resp = alice_client.get(url, follow=True)
    html = resp.content.decode()
    assert resp.status_code == 200
    outside = re.sub(r"<script\b.*?</script>", "", html, flags=re.S)  # JSON in scripts may hold anything
    for token in ("{#", "#}", "{%", "%}"):  # ("{{" and "}}" can be JSON in a data attribute)
        assert token not in outside, (url, token, outside[max(0, outside.find(token) - 200):outside.find(token) + 200])
