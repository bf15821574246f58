"""A team's training checkpoint behind the OpenAI-compatible endpoint (``manage.py serve --job``):
greedy completions equal the checkpoint's own ``generate``; only the job's team sees the model
(another team's token gets the 404 of a model that does not exist); a model without a chat
template refuses chat with a 400 that points to /v1/completions; what cannot be served is
refused by the command with the reason."""
import subprocess
import sys

import pytest

from tests.conftest import make_user
from tests.stack import ROOT

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def served_job(django_db_setup, django_db_blocker, tmp_path_factory):
    from explorer.accounts.models import ApiToken
    from explorer.training import jobs as training_jobs
    from tests.conftest import TINY_SPEC
    from tests.stack import Stack

    with django_db_blocker.unblock():
        owner, team = make_user("ckpt-owner")
        other, _ = make_user("ckpt-other")
        spec = {**TINY_SPEC, "train": {**TINY_SPEC["train"], "steps": 40, "checkpoint_every": 20}}
        job = training_jobs.create_job(owner, team, spec, name="copy-served")
        assert training_jobs.run_job(job.pk, "test-worker") == "succeeded"
        s = Stack(tmp_path_factory.mktemp("serve-ckpt"))
        try:
            s.start_web()
            s.start_serving(f"job-{job.pk}", "--job", str(job.pk), EXPLORER_SERVING_KV_MB=8)
            yield s, job, ApiToken.issue(owner, "t")[1], ApiToken.issue(other, "t")[1]
        finally:
            s.stop()


def test_a_checkpoint_is_served_to_its_team_only_and_what_cannot_be_served_is_refused(served_job):
    import torch

    from engine.training import checkpoint as engine_checkpoint
    from explorer.training.checkpoints import checkpoint_path

    stack, job, token, other_token = served_job
    model_id = f"job-{job.pk}"
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=token, max_retries=0)
    assert model_id in [m.id for m in client.models.list()]
    model, tokenizer, _ = engine_checkpoint.load_model(checkpoint_path(job))
    for prompt in ["abcd>", "ponm>"]:
        reply = client.completions.create(model=model_id, prompt=prompt, max_tokens=6, temperature=0)
        ids = tokenizer.encode(prompt)
        expected = model.generate(torch.tensor([ids]), 6, temperature=0)[0, len(ids):].tolist()
        assert reply.choices[0].text == tokenizer.decode(expected)
        assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == 6
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "abc"}])
    assert "no chat template" in info.value.body["message"] and "/v1/completions" in info.value.body["message"]

    outsider = openai.OpenAI(base_url=stack.url + "/v1", api_key=other_token, max_retries=0)
    assert model_id not in [m.id for m in outsider.models.list()]
    with pytest.raises(openai.NotFoundError):
        outsider.completions.create(model=model_id, prompt="abcd>", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        outsider.models.retrieve(model_id)

    # (here, not in a test of its own: the database is emptied after each test, the job with it)
    def serve(*args):
        return subprocess.run([sys.executable, "manage.py", "serve", *args], cwd=ROOT, env=stack.env,
                              capture_output=True, text=True, timeout=120)

    assert "no such job" in serve("--job", "987654321").stderr
    assert "no checkpoint at step 7" in serve("--job", str(job.pk), "--step", "7").stderr
    assert "choose a decoder" in serve("all-minilm-l6-v2").stderr
    assert "one of the two" in serve().stderr
