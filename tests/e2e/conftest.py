import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
ROOT = Path(__file__).resolve().parents[2]
# Where the tests' screenshots go: var/screenshots/ (ignored by git), so a test run leaves the
# checkout clean; `make screenshots` sets EXPLORER_SCREENSHOTS_DIR=docs/screenshots to retake the
# documentation's pictures on purpose (look at them, then commit them).
SHOTS = Path(os.environ.get("EXPLORER_SCREENSHOTS_DIR") or ROOT / "var" / "screenshots")

@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (make system-deps installs it as root)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread while it runs; the test's own ORM
    # calls are plain synchronous calls between browser steps, which Django would otherwise refuse.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            yield b
            b.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


@pytest.fixture
def shots():
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


@pytest.fixture(scope="module")
def web(django_db_setup, django_db_blocker, tmp_path_factory):
    """The ASGI server alone, for pages whose work needs no worker (an analysis, a small
    tokenizer, events the test writes itself)."""
    with django_db_blocker.unblock():
        from tests.stack import Stack

        s = Stack(tmp_path_factory.mktemp("web"))
        try:
            s.start_web()
            yield s
        finally:
            s.stop()
