"""The OpenAI-compatible endpoint against a client nobody here wrote (the official ``openai``
package), with a real web server, a real serving process (``manage.py serve``) serving SmolLM2,
and the real Redis between them."""
import threading
import time

import httpx
import pytest

from engine.tokenlab import SMOLLM2_NAME
from tests.integration.test_job_stream import user_with_token

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

MODEL = SMOLLM2_NAME
QUESTION = "What is the capital of France?"
TEAM_TPM = 3000


@pytest.fixture(scope="module")
def smollm2(smollm2_models_dir):
    from engine.interop import pretrained

    why = pretrained.available(MODEL)
    if why:
        pytest.skip(f"SmolLM2 is not installed here: {why}")
    return pretrained.load_pretrained(MODEL)


@pytest.fixture(scope="module")
def serving(django_db_setup, django_db_blocker, tmp_path_factory, smollm2):
    from tests.stack import Stack

    with django_db_blocker.unblock():
        s = Stack(tmp_path_factory.mktemp("serving"))
        s.env["EXPLORER_SERVING_TEAM_TPM"] = str(TEAM_TPM)
        try:
            s.start_web()
            s.start_serving(MODEL, EXPLORER_SERVING_KV_MB=64, EXPLORER_SERVING_MAX_BATCH=8)
            yield s
        finally:
            s.stop()


def client_for(serving, name):
    _, token = user_with_token(name)
    return openai.OpenAI(base_url=serving.url + "/v1", api_key=token, max_retries=0, timeout=120)


def greedy(smollm2, messages, max_new_tokens):
    """What the engine's own generate answers (greedy), decoded as the endpoint decodes it."""
    import torch

    model, tokenizer = smollm2
    ids = tokenizer.encode_chat(messages)
    out = model.generate(torch.tensor([ids]), max_new_tokens, temperature=0, stop_token=tokenizer.eos_token_id)
    new = [t for t in out[0, len(ids):].tolist() if t != tokenizer.eos_token_id]
    return tokenizer.decode(new), len(ids)


def figures(model=MODEL):
    from explorer.serving import bus

    raw = bus.sync_client().get(bus.alive(model))
    return bus.unpack(raw) if raw else None


def test_models_lists_the_served_model(serving):
    client = client_for(serving, "oa-models")
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_greedy_equals_the_engines_generate(serving, smollm2):
    client = client_for(serving, "oa-chat")
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=24)
    expected, n_prompt = greedy(smollm2, messages, 24)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"  # its end-of-turn token, before 24 tokens
    assert reply.usage.prompt_tokens == n_prompt and reply.usage.completion_tokens > 0
    assert reply.object == "chat.completion" and reply.model == MODEL


def test_chat_streams_the_same_answer_with_usage(serving, smollm2):
    client = client_for(serving, "oa-stream")
    messages = [{"role": "user", "content": QUESTION}]
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=24,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy(smollm2, messages, 24)[0]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # token by token, not at once


def test_greedy_answers_are_unchanged_while_they_share_the_batch(serving, smollm2):
    client = client_for(serving, "oa-batch")
    questions = [QUESTION, "Name three colours.", "What is 2 + 2?", "Write a haiku about the sea."]
    answers = {}

    def ask(q):
        answers[q] = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}],
                                                    temperature=0, max_tokens=20).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {q: greedy(smollm2, [{"role": "user", "content": q}], 20)[0] for q in questions}


def test_completions_with_logprobs_stop_and_n(serving, smollm2):
    import torch

    client = client_for(serving, "oa-complete")
    prompt = "The capital of France is"
    reply = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6, logprobs=3)
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 6
    model, tokenizer = smollm2
    ids = tokenizer.encode(prompt)
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    best = torch.log_softmax(logits[0, -1].float(), -1).max()
    assert choice.logprobs.token_logprobs[0] == pytest.approx(float(best), abs=1e-3)
    assert len(choice.logprobs.top_logprobs[0]) == 3 and len(choice.logprobs.tokens) == 6
    assert "".join(choice.logprobs.tokens) == choice.text
    first_word = choice.text.split()[0]
    stopped = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6, stop=[first_word])
    assert stopped.choices[0].finish_reason == "stop" and first_word not in stopped.choices[0].text
    several = client.completions.create(model=MODEL, prompt=prompt, temperature=1.0, max_tokens=5, n=3, seed=7)
    again = client.completions.create(model=MODEL, prompt=prompt, temperature=1.0, max_tokens=5, n=3, seed=7)
    assert sorted(c.index for c in several.choices) == [0, 1, 2]
    assert [c.text for c in several.choices] == [c.text for c in again.choices]  # seeded: reproducible


def test_bad_input_answers_in_openais_shape(serving):
    client = client_for(serving, "oa-bad")
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=100_000)
    assert info.value.body["code"] == "context_length_exceeded" and "8192" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=serving.url + "/v1", api_key="lae_wrong", max_retries=0).models.list()
    raw = httpx.post(serving.url + "/v1/chat/completions", content=b"{not json",
                     headers={"Authorization": f"Bearer {client.api_key}", "Content-Type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    anonymous = httpx.post(serving.url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert anonymous.status_code == 401 and "API key" in anonymous.json()["error"]["message"]
    wrong_method = httpx.get(serving.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {client.api_key}"})
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_team_tokens_per_minute_surface_as_rate_limit_errors(serving):
    client = client_for(serving, "oa-tpm")
    with pytest.raises(openai.RateLimitError) as info:
        client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=TEAM_TPM, n=2)
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert int(info.value.response.headers["Retry-After"]) >= 1


def test_a_client_that_goes_away_frees_its_blocks(serving):
    _, token = user_with_token("oa-gone")
    with httpx.stream("POST", serving.url + "/v1/completions", timeout=60,
                      headers={"Authorization": f"Bearer {token}"},
                      json={"model": MODEL, "prompt": "Count slowly:", "max_tokens": 500, "stream": True,
                            "temperature": 0}) as response:
        lines = response.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in got)
        assert until(lambda f: f["running"] == 1 and f["blocks_used"] >= 1)  # (the figures lag up to a second)
    assert until(lambda f: (f["running"], f["blocks_used"], f["totals"]["aborted"]) == (0, 0, 1))


def until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition(figures()):
            return True
        time.sleep(0.2)
    return False


def test_a_full_queue_answers_429_and_a_dead_server_an_error_then_it_serves_again(serving, smollm2):
    """Restarted with a batch of 1 and 1 waiting place: of 5 requests at once some get 429
    (``openai.RateLimitError``). Then killed mid-stream: the stream ends in an error, not a hang;
    started again, it answers as before."""
    import signal

    serving.stop_one("serving")
    serving.start_serving(MODEL, EXPLORER_SERVING_KV_MB=64, EXPLORER_SERVING_MAX_BATCH=1,
                          EXPLORER_SERVING_MAX_QUEUED=1)
    client = client_for(serving, "oa-busy")
    outcomes = []

    def ask():
        try:
            client.completions.create(model=MODEL, prompt="Tell me a long story.", max_tokens=40, temperature=0)
            outcomes.append("ok")
        except openai.RateLimitError as exc:
            outcomes.append(exc.response.headers.get("Retry-After"))

    threads = [threading.Thread(target=ask) for _ in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    refused = [o for o in outcomes if o != "ok"]
    assert len(outcomes) == 5 and "ok" in outcomes and refused  # a batch of 1 and 1 waiting: not 5 at once
    assert all(o.isdigit() and int(o) >= 1 for o in refused)  # each 429 says when to come back

    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}],
                                            max_tokens=400, temperature=0, stream=True)
    next(iter(stream))
    serving.stop_one("serving", signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert time.monotonic() - t0 < 15
    with pytest.raises(openai.NotFoundError):  # nothing serves it now: refused at once
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=4)

    serving.start_serving(MODEL, EXPLORER_SERVING_KV_MB=64, EXPLORER_SERVING_MAX_BATCH=8)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                           temperature=0, max_tokens=24)
    assert reply.choices[0].message.content == greedy(smollm2, [{"role": "user", "content": QUESTION}], 24)[0]


def test_a_browser_session_is_not_enough(alice_client):
    """Only an API token opens the endpoint: a logged-in session (whose cookie a hostile page could
    make a browser send) gets 401, so CSRF has nothing to guard."""
    response = alice_client.post("/v1/chat/completions", data={"model": MODEL, "messages": [{"role": "user",
                                 "content": "hi"}]}, content_type="application/json")
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
    assert alice_client.get("/v1/models").status_code == 401
