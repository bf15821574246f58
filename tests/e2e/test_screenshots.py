"""`make test` leaves the checkout clean: the browser tests write their screenshots under var/
(ignored by git), and only `make screenshots` points them at the tracked docs/screenshots/."""
import os
import shutil
import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT

WHERE = "from tests.e2e.conftest import SHOTS; print(SHOTS)"


def shots_dir(**env):
    env = {**{k: v for k, v in os.environ.items() if k != "EXPLORER_SCREENSHOTS_DIR"}, **env}
    return subprocess.run([sys.executable, "-c", WHERE], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_test_runs_write_screenshots_where_git_does_not_look():
    shots = shots_dir()
    assert shots == str(ROOT / "var" / "screenshots")
    if shutil.which("git") and (ROOT / ".git").exists():
        assert subprocess.run(["git", "check-ignore", "-q", f"{shots}/job.png"], cwd=ROOT, check=False).returncode == 0


def test_make_screenshots_retakes_the_documentations_pictures():
    assert shots_dir(EXPLORER_SCREENSHOTS_DIR=str(ROOT / "docs" / "screenshots")) == str(ROOT / "docs" / "screenshots")
    if not shutil.which("make"):
        pytest.skip("no make here")
    plan = subprocess.run(["make", "-n", "screenshots"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"EXPLORER_SCREENSHOTS_DIR={ROOT}/docs/screenshots" in plan and "pytest tests/e2e" in plan
