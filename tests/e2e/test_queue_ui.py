"""The queue page as a team uses it, in headless Chromium (web server only: the jobs wait).

A maintainer sees each queued job's place and estimated start, raises one to high priority and
moves another to the top, and the order follows; a member cannot raise priority; the history
search narrows the list; the team page shows members and quotas. Screenshots:
docs/screenshots/queue_priorities.png and docs/screenshots/team.png.
"""
import re

import pytest

from explorer.accounts.models import Membership
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs
from tests.conftest import TINY_SPEC, make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def order(page):
    return page.eval_on_selector_all("#jobs-body tr[data-status=queued] [data-role=name]", "els => els.map(e => e.textContent)")


def place(page, job):
    return page.locator(f"tr[data-job-id='{job.pk}'] [data-role=place]").text_content()


def wait_place(page, job, prefix):
    page.wait_for_function("([id, p]) => document.querySelector(`tr[data-job-id='${id}'] [data-role=place]`).textContent.startsWith(p)",
                           arg=[job.pk, prefix])


def test_maintainer_reorders_and_member_is_limited(web, page, shots):
    lead, team = make_user("lena")  # admin of her team
    sam, _ = make_user("sam")
    Membership.objects.create(user=sam, team=team, role="member")
    mo, _ = make_user("mo")
    Membership.objects.create(user=mo, team=team, role="maintainer")
    team.max_running_per_user = 1
    team.save()
    spec = {**TINY_SPEC, "train": {**TINY_SPEC["train"], "steps": 20000}}  # minutes each, at the default speed
    jobs = [training_jobs.create_job(user, team, spec, name=name)
            for user, name in ((lead, "baseline 1"), (lead, "baseline 2"), (sam, "sam's sweep"), (mo, "mo's ablation"))]
    encoder = {**spec, "model": {**TINY_SPEC["model"], "family": "encoder"}}
    jobs.append(training_jobs.create_job(sam, team, encoder, name="sam's encoder", priority="low"))

    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, web, "mo")
    page.goto(web.url + "/queue/")
    assert order(page) == ["sam's encoder", "mo's ablation", "sam's sweep", "baseline 2", "baseline 1"]  # newest first
    assert re.fullmatch(r"#1 in cpu queue · starts next", place(page, jobs[0]))
    assert re.fullmatch(r"#5 in cpu queue · starts in ~.+", place(page, jobs[4]))
    assert page.locator(f"tr[data-job-id='{jobs[4].pk}'] [data-role=priority]").text_content() == "low"

    # a maintainer raises sam's sweep to high: it is next
    page.select_option(f"tr[data-job-id='{jobs[2].pk}'] [data-role=priority-select]", "high")
    wait_place(page, jobs[2], "#1 ")
    assert Job.objects.get(pk=jobs[2].pk).priority == 2
    wait_place(page, jobs[0], "#2 ")
    # and moves mo's ablation to the very top
    page.click(f"tr[data-job-id='{jobs[3].pk}'] [data-role=top]")
    wait_place(page, jobs[3], "#1 ")
    wait_place(page, jobs[2], "#2 ")
    page.mouse.move(0, 0)
    page.wait_for_timeout(200)
    page.screenshot(path=str(shots / "queue_priorities.png"), full_page=True)

    # history search: sam's jobs of the encoder family
    page.select_option("#history-search select[name=owner]", "sam")
    page.select_option("#history-search select[name=family]", "encoder")
    page.click("#history-search button[type=submit]")
    page.wait_for_url(re.compile(r"owner=sam"))
    assert order(page) == ["sam's encoder"]

    # a member: controls on their own queued jobs only, and no "high"
    page.context.clear_cookies()
    log_in(page, web, "sam")
    page.goto(web.url + "/queue/")
    assert page.locator(f"tr[data-job-id='{jobs[0].pk}'] [data-role=queue-controls]").is_hidden()
    own = page.locator(f"tr[data-job-id='{jobs[4].pk}']")
    assert own.locator("[data-role=queue-controls]").is_visible() and own.locator("[data-role=top]").is_hidden()
    assert own.locator("option[value=high]").is_disabled()

    page.goto(web.url + "/team/")
    assert "Save quotas" not in page.content()  # not an admin
    page.context.clear_cookies()
    log_in(page, web, "lena")
    page.goto(web.url + "/team/")
    assert page.locator("#members-table tbody tr").count() == 3
    page.fill("input[name=max_running]", "3")
    page.click("#quotas-card button[type=submit]")
    page.wait_for_selector("text=Quotas saved.")
    page.mouse.move(0, 0)
    page.screenshot(path=str(shots / "team.png"), full_page=True)
    assert not errors, errors


def test_places_in_line_move_live_without_a_refetch(web, page):
    """A job leaving the queue (cancelled elsewhere) moves the others up at once: the team's
    message carries every place in line, so the page asks the API nothing."""
    from explorer.jobs import services

    user, team = make_user("quinn")
    spec = {**TINY_SPEC, "train": {**TINY_SPEC["train"], "steps": 20000}}
    jobs = [training_jobs.create_job(user, team, spec, name=f"run {i}") for i in range(3)]
    log_in(page, web, "quinn")
    page.goto(web.url + "/queue/")
    page.wait_for_selector("#live[data-state=open]")
    assert place(page, jobs[2]).startswith("#3 ")
    asked = []
    page.on("request", lambda r: asked.append(r.url) if "/api/v1/jobs" in r.url else None)

    assert services.cancel_job(Job.objects.get(pk=jobs[0].pk))
    wait_place(page, jobs[1], "#1 ")
    wait_place(page, jobs[2], "#2 ")
    page.wait_for_function("id => document.querySelector(`tr[data-job-id='${id}']`).dataset.status === 'cancelled'", arg=jobs[0].pk)
    assert place(page, jobs[0]) == ""

    # a new job arrives as a row with its place, and the count follows
    fourth = training_jobs.create_job(user, team, spec, name="run 3")
    page.wait_for_selector(f"tr[data-job-id='{fourth.pk}']")
    wait_place(page, fourth, "#3 ")
    assert page.locator("#jobs-count").text_content().startswith("4 jobs")
    page.wait_for_timeout(300)
    assert asked == [], asked
