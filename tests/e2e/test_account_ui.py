"""The pages around the work, as a new user meets them, in headless Chromium (web server only):
sign up (a mistake shown at its field, then an account with a personal team), log in (a wrong
password refused), the account page (an API token shown once, then usable), and the datasets page
(a non-UTF-8 file refused at its field, a text file uploaded). Screenshots: signup.png,
login.png, account.png, datasets.png."""
import re

import httpx
import pytest

from explorer.accounts.models import ApiToken
from explorer.datasets.models import Dataset

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def settle(page):
    page.mouse.move(0, 0)
    page.wait_for_timeout(200)


def test_a_new_user_signs_up_logs_in_makes_a_token_and_uploads_a_dataset(web, page, shots, tmp_path):
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # sign up: passwords that differ are refused at the field, nothing is created
    page.goto(web.url + "/signup/")
    page.fill("input[name=username]", "nadia")
    page.fill("input[name=password1]", "a-long-pass-phrase-17")
    page.fill("input[name=password2]", "another-pass-phrase-17")
    page.click("button[type=submit]")
    page.wait_for_selector("text=The two password fields didn’t match.")
    settle(page)
    page.screenshot(path=str(shots / "signup.png"), full_page=True)
    page.fill("input[name=password1]", "a-long-pass-phrase-17")
    page.fill("input[name=password2]", "a-long-pass-phrase-17")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/compose/"))
    assert page.locator("text=Welcome! Your personal team is ready.").is_visible()

    # log out, then a wrong password is refused and the right one lets her in
    page.context.clear_cookies()
    page.goto(web.url + "/login/")
    page.fill("input[name=username]", "nadia")
    page.fill("input[name=password]", "not-her-password")
    page.click("button[type=submit]")
    page.wait_for_selector(".form-errors")
    assert "/login/" in page.url
    settle(page)
    page.screenshot(path=str(shots / "login.png"), full_page=True)
    page.fill("input[name=password]", "a-long-pass-phrase-17")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/compose/"))

    # an API token: shown once, stored as a hash, and it works against the API
    page.goto(web.url + "/account/")
    page.fill("input[name=name]", "laptop script")
    page.click("button[type=submit]:has-text('Create token')")
    token = page.locator("#new-token").text_content().strip()
    assert token.startswith("lae_")
    stored = ApiToken.objects.get(user__username="nadia", name="laptop script")
    assert token not in {getattr(stored, f.attname) for f in ApiToken._meta.fields}  # only its hash
    me = httpx.get(web.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert me.status_code == 200 and me.json()["username"] == "nadia"
    settle(page)
    page.screenshot(path=str(shots / "account.png"), full_page=True)
    page.goto(web.url + "/account/")
    assert page.locator("#new-token").count() == 0  # never shown again

    # datasets: a file that is not UTF-8 is refused at the field; a text file is kept
    page.goto(web.url + "/datasets/")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait\n".encode("latin-1"))
    page.set_input_files("input[name=file]", str(bad))
    page.click("button[type=submit]:has-text('Upload')")
    page.wait_for_selector("[data-field-wrap=file].has-error [data-errors-for=file] div")
    assert "UTF-8" in page.locator("[data-errors-for=file]").text_content()
    assert not Dataset.objects.filter(team__memberships__user__username="nadia").exists()
    good = tmp_path / "sonnets.txt"
    good.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 40)
    page.fill("input[name=name]", "sonnets")
    page.set_input_files("input[name=file]", str(good))
    page.click("button[type=submit]:has-text('Upload')")
    page.wait_for_selector("text=Uploaded sonnets")
    assert page.locator("table.table tbody tr").count() == 1
    settle(page)
    page.screenshot(path=str(shots / "datasets.png"), full_page=True)
    assert not errors, errors


@pytest.mark.parametrize("width", [1024, 1280, 1440])
def test_no_page_is_wider_than_the_window(web, page, width):
    """The top bar (brand, eight links, the "Real LLMs" menu, the team menu, the user) fits laptop widths: it pushed
    every page 87 px wider than a 1280 px window, with a sideways scroll bar."""
    from tests.conftest import make_user
    from tests.e2e.helpers import log_in

    make_user(f"wide{width}")
    page.set_viewport_size({"width": width, "height": 800})
    log_in(page, web, f"wide{width}")
    for path in ("/compose/", "/compare/", "/queue/", "/workers/", "/datasets/", "/tokenizers/", "/inference/",
                 "/account/", "/team/", "/chat/", "/attention/", "/finetune/", "/models/"):
        page.goto(web.url + path)
        page.wait_for_load_state("networkidle")  # charts and tables drawn
        extra = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert extra <= 0, f"{path} is {extra} px wider than a {width} px window"
