"""Checkpoints: safetensors files, exact resume, fine-tuning starts, export to transformers."""

import json
import os

import pytest
import torch

from engine import ConfigError, parse_spec, train
from engine.interop.export import export_transformers
from engine.introspect.attention_maps import decode_maps, event_inputs
from engine.introspect.attention_zoom import layer_scores
from engine.training.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    list_snapshots,
    list_weights,
    load_model,
    prune_snapshots,
    read_checkpoint,
    save_checkpoint,
    save_snapshot,
)
from tests.engine.conftest import TEXT


def run(job, **kw):
    events = []
    result = train(parse_spec(job), on_event=events.append, **kw)
    return result, events


def stop_after(n):
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] > n

    return should_stop


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "lion", "adafactor"])
def test_resumed_run_continues_the_same_loss_curve(tiny_job, tmp_path, optimizer):
    # dropout and an eval inside each half: the RNG streams and optimiser state must all come back
    tiny_job["model"] |= {"dropout": 0.1}
    tiny_job["train"] |= {"steps": 14, "optimizer": optimizer, "eval_interval": 4}
    whole, _ = run(tiny_job)

    directory = str(tmp_path / "ckpt")
    first, events = run(tiny_job, checkpoint_dir=directory, checkpoint_every=4, should_stop=stop_after(9))
    assert first.cancelled and first.steps_done == 9
    saved = [e["step"] for e in events if e["kind"] == "checkpoint"]
    assert saved == [4, 8, 9]  # every 4 steps, and where the cancel came
    assert [c["step"] for c in list_checkpoints(directory)] == [4, 8, 9]

    rest, events = run(tiny_job, checkpoint_dir=directory, resume_from=latest_checkpoint(directory))
    assert events[0]["kind"] == "start" and events[0]["resumed_from_step"] == 9
    steps = [e["step"] for e in events if e["kind"] == "step"]
    assert steps[0] == 10 and steps[-1] == 14
    assert first.train_losses + rest.train_losses == pytest.approx(whole.train_losses, abs=1e-6)
    assert [s for s, _ in rest.val_losses] == [12, 14]
    assert [v for _, v in rest.val_losses] == pytest.approx([v for _, v in whole.val_losses[-2:]], abs=1e-6)
    for a, b in zip(rest.model.parameters(), whole.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_checkpoint_files_are_safetensors_with_the_run_state(tiny_job, tmp_path):
    directory = str(tmp_path / "ckpt")
    result, events = run(tiny_job, checkpoint_dir=directory)
    path = latest_checkpoint(directory)
    assert os.path.basename(path) == "step-000012"
    assert sorted(os.listdir(path)) == ["model.safetensors", "optimizer.safetensors", "trainer.json"]
    event = [e for e in events if e["kind"] == "checkpoint"][-1]
    assert event == {"kind": "checkpoint", "step": 12, "name": "step-000012", "bytes": list_checkpoints(directory)[-1]["bytes"]}
    checkpoint = read_checkpoint(path)
    assert checkpoint.step == 12 and checkpoint.spec["model"]["n_embd"] == 32
    from safetensors import safe_open

    with safe_open(os.path.join(path, "optimizer.safetensors"), "pt") as f:
        assert any(k.endswith(".exp_avg_sq") for k in f.keys())  # AdamW's second moments are saved

    model, tokenizer, config = load_model(path)
    assert config.n_layer == 2 and tokenizer.vocab_size == result.tokenizer.vocab_size
    idx = torch.tensor([tokenizer.encode("abc")])
    torch.testing.assert_close(model(idx)[0], result.model.eval()(idx)[0])


def test_keep_prunes_old_checkpoints_and_ignores_partial_writes(tiny_job, tmp_path):
    directory = str(tmp_path / "ckpt")
    result, _ = run(tiny_job | {"train": tiny_job["train"] | {"steps": 10}}, checkpoint_dir=directory, checkpoint_every=2)
    assert [c["step"] for c in list_checkpoints(directory)] == [6, 8, 10]  # the newest 3
    os.makedirs(os.path.join(directory, ".partial-abc"))  # a writer killed mid-save
    os.makedirs(os.path.join(directory, "step-000099"))  # no trainer.json: incomplete
    assert latest_checkpoint(directory).endswith("step-000010")
    spec = parse_spec(tiny_job)
    path = save_checkpoint(directory, step=11, model=result.model, optimizer=None, spec=spec.to_dict(),
                           tokenizer=result.tokenizer, trainer={}, keep=0)
    assert latest_checkpoint(directory) == path


def test_init_from_starts_from_the_weights_only(tiny_job, tmp_path):
    directory = str(tmp_path / "ckpt")
    pre, _ = run(tiny_job, checkpoint_dir=directory)
    tiny_job["train"] |= {"steps": 1, "lr": 1e-12, "warmup_steps": 0, "eval_interval": 1}
    tuned, events = run(tiny_job, init_from=latest_checkpoint(directory))
    assert "resumed_from_step" not in events[0]
    assert [e["step"] for e in events if e["kind"] == "step"] == [1]  # a new run, its own schedule
    for a, b in zip(tuned.model.parameters(), pre.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0)  # the tiny lr barely moves them


def test_an_explicit_head_size_trains_resumes_and_older_checkpoints_still_load(tiny_job, tmp_path):
    """Issue 14, defect 7: head_dim trains and resumes like any field; a checkpoint written before
    the field existed (no "head_dim" in its spec) loads, resumes and seeds a new run."""
    wide = tiny_job | {"model": tiny_job["model"] | {"head_dim": 12, "n_kv_head": 2, "position": "rope"}}
    directory = str(tmp_path / "wide")
    first, _ = run(wide, checkpoint_dir=directory, checkpoint_every=4, should_stop=stop_after(5))
    rest, events = run(wide, checkpoint_dir=directory, resume_from=latest_checkpoint(directory))
    assert events[0]["resumed_from_step"] == 5 and rest.steps_done == wide["train"]["steps"]
    assert rest.model.h[0].attn.q_proj.weight.shape == (4 * 12, 32)
    model, _, config = load_model(latest_checkpoint(directory))
    assert config.head_dim == 12 and model.h[0].attn.o_proj.weight.shape == (32, 48)

    directory = str(tmp_path / "old")
    run(tiny_job, checkpoint_dir=directory, should_stop=stop_after(3))
    path = latest_checkpoint(directory)
    state_file = os.path.join(path, "trainer.json")
    with open(state_file, encoding="utf-8") as f:
        state = json.load(f)
    del state["spec"]["model"]["head_dim"]  # as saved before the field existed
    with open(state_file, "w", encoding="utf-8") as f:
        json.dump(state, f)
    assert read_checkpoint(path).model_config.head_dim is None
    assert load_model(path)[2].head_size == 8
    resumed, events = run(tiny_job, checkpoint_dir=directory, resume_from=path)
    assert events[0]["resumed_from_step"] == 3 and not resumed.cancelled
    run(tiny_job | {"train": tiny_job["train"] | {"steps": 1, "warmup_steps": 0}}, init_from=path)
    with pytest.raises(ConfigError) as info:  # and an explicit head size is another architecture
        run(wide, init_from=path)
    assert "head_dim: checkpoint None, this job 12" in info.value.errors["train.init_from"]


def test_a_checkpoint_of_another_architecture_is_refused_with_the_differences(tiny_job, tmp_path, text_file):
    tiny_job["data"] = {"source": "text", "path": text_file, "tokenizer": "char"}
    directory = str(tmp_path / "ckpt")
    run(tiny_job, checkpoint_dir=directory)
    path = latest_checkpoint(directory)
    other = tiny_job | {"model": tiny_job["model"] | {"n_embd": 64}}
    with pytest.raises(ConfigError) as info:
        run(other, init_from=path)
    assert "n_embd: checkpoint 32, this job 64" in info.value.errors["train.init_from"]
    # as many distinct characters, so the same vocabulary size, but another character set
    renamed = tmp_path / "renamed.txt"
    text = open(text_file, encoding="utf-8").read()
    assert "F" in text and "Q" not in text
    renamed.write_text(text.replace("F", "Q"), encoding="utf-8")
    retokenized = tiny_job | {"data": tiny_job["data"] | {"path": str(renamed)}}
    with pytest.raises(ConfigError) as info:
        run(retokenized, resume_from=path)
    message = info.value.errors["train.resume_from"]
    assert "tokenizer: the checkpoint's (char" in message and "n_embd" not in message
    with pytest.raises(ConfigError) as info:
        run(tiny_job, resume_from=str(tmp_path))
    assert "not a readable checkpoint" in info.value.errors["train.resume_from"]


def test_export_to_a_transformers_directory_gives_the_same_logits(tiny_job, tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_job["model"] |= {"n_embd": 24, "n_head": 3}  # odd sizes; GPT-2 defaults otherwise
    directory = str(tmp_path / "ckpt")
    result, _ = run(tiny_job, checkpoint_dir=directory)
    out = str(tmp_path / "hf")
    info = export_transformers(latest_checkpoint(directory), out)
    assert info["model_type"] == "gpt2"
    assert {"config.json", "model.safetensors", "explorer_tokenizer.json"} <= set(info["files"])
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.tensor([result.tokenizer.encode("abcab")])
    with torch.no_grad():
        diff = (hf(idx).logits - result.model.eval()(idx)[0]).abs().max().item()
    assert diff <= 1e-4
    with open(os.path.join(out, "explorer_tokenizer.json")) as f:
        assert json.load(f)["kind"] == result.tokenizer.to_dict()["kind"]


@pytest.mark.parametrize("model_type, model", [
    ("qwen2", {"position": "rope", "norm": "rmsnorm", "ffn": "swiglu", "bias": False, "qkv_bias": True,
               "n_kv_head": 2, "norm_eps": 1e-6}),
    ("gemma2", {"position": "rope", "norm": "rmsnorm_offset", "norm_placement": "sandwich", "ffn": "geglu",
                "bias": False, "embed_scale": True, "attention": "local_global", "window": 4, "n_kv_head": 2,
                "head_dim": 12, "attn_softcap": 50.0, "final_softcap": 30.0, "norm_eps": 1e-6}),
])
def test_qwen2_and_gemma2_checkpoints_export(model_type, model, tiny_job, tmp_path):
    """Issue 15: a trained Qwen2- or Gemma 2-shaped job exports as that architecture, and
    transformers reads the directory back to the same logits."""
    from transformers import AutoModelForCausalLM

    tiny_job["model"] |= model
    tiny_job["train"] |= {"steps": 4, "eval_interval": 4}
    directory = str(tmp_path / "ckpt")
    result, _ = run(tiny_job, checkpoint_dir=directory)
    out = str(tmp_path / "hf")
    assert export_transformers(latest_checkpoint(directory), out)["model_type"] == model_type
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.tensor([result.tokenizer.encode("abcab")])
    with torch.no_grad():
        diff = (hf(idx).logits - result.model.eval()(idx)[0]).abs().max().item()
    assert diff <= 1e-5


def long_input_job(tiny_job, tmp_path):
    """A text job whose 96-token context is longer than ``attention_maps.MAX_TOKENS``: each
    evaluation's maps carry a pooled overview, zoomed into from that step's weights."""
    text = tmp_path / "long.txt"
    text.write_text(TEXT * 40, encoding="utf-8")
    tiny_job["model"] |= {"block_size": 96}
    tiny_job["data"] = {"source": "text", "path": str(text), "tokenizer": "char"}
    tiny_job["train"] |= {"steps": 10, "batch_size": 2, "eval_interval": 2, "eval_iters": 1, "sample_tokens": 0}
    return tiny_job


def overview_of(model, event):
    """The event's overview of layer 0 recomputed with ``model``'s weights: (H, Nq, Nk)."""
    ov = event["stacks"]["self"]["overview"]
    (idx,), _ = event_inputs(event)
    t = ov["length"][0]
    pooled = layer_scores(model, idx, 0).pooled(0, t, 0, t, *ov["block"])
    return pooled / pooled.sum(-1, keepdim=True), decode_maps(ov["maps"], ov["shape"])[0]


def test_pruned_checkpoints_of_long_input_evaluations_leave_their_weights(tiny_job, tmp_path):
    directory = str(tmp_path / "ckpt")
    job = long_input_job(tiny_job, tmp_path)
    _, events = run(job, checkpoint_dir=directory, checkpoint_every=2)
    assert [c["step"] for c in list_checkpoints(directory)] == [6, 8, 10]  # resume and export see these only
    snapshots = list_snapshots(directory)
    assert [s["step"] for s in snapshots] == [2, 4]
    assert sorted(os.listdir(snapshots[0]["path"])) == ["model.safetensors", "trainer.json"]  # no optimiser state
    assert [(w["step"], w["checkpoint"]) for w in list_weights(directory)] == [
        (2, False), (4, False), (6, True), (8, True), (10, True)]
    assert latest_checkpoint(directory).endswith("step-000010")

    # the snapshot recomputes step 2's maps; the newest checkpoint's weights would not
    first = next(e for e in events if e["kind"] == "attention" and e["step"] == 2)
    recomputed, sent = overview_of(load_model(snapshots[0]["path"])[0], first)
    assert (recomputed - sent).abs().max() <= 1 / 255
    later, _ = overview_of(load_model(latest_checkpoint(directory))[0], first)
    assert (later - sent).abs().max() > 2 / 255


def test_short_inputs_keep_no_snapshots_and_snapshots_are_bounded(tiny_job, tmp_path):
    directory = str(tmp_path / "ckpt")
    result, _ = run(tiny_job | {"train": tiny_job["train"] | {"steps": 10, "eval_interval": 2}},
                    checkpoint_dir=directory, checkpoint_every=2)
    assert list_snapshots(directory) == []  # 16 tokens: the maps are whole in the event, no zoom
    spec = parse_spec(tiny_job).to_dict()
    for step in (1, 3, 5):  # what engine.train may write between checkpoints
        save_snapshot(directory, step=step, model=result.model, spec=spec, tokenizer=result.tokenizer)
    assert [s["step"] for s in list_snapshots(directory)] == [1, 3, 5]
    model, _, _ = load_model(list_snapshots(directory)[0]["path"])
    for a, b in zip(model.parameters(), result.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    prune_snapshots(directory, kept=2)
    assert [s["step"] for s in list_snapshots(directory)] == [3, 5]  # the oldest dropped
    prune_snapshots(directory, max_bytes=list_snapshots(directory)[-1]["bytes"])
    assert [s["step"] for s in list_snapshots(directory)] == [5]
    assert [c["step"] for c in list_checkpoints(directory)] == [6, 8, 10]


def test_evaluations_between_checkpoints_keep_their_weights_for_the_zoom(tiny_job, tmp_path):
    directory = str(tmp_path / "ckpt")
    job = long_input_job(tiny_job, tmp_path)
    _, events = run(job, checkpoint_dir=directory, checkpoint_every=4)  # evaluations every 2 steps
    evaluated = [e["step"] for e in events if e["kind"] == "attention"]
    assert evaluated == [2, 4, 6, 8, 10]
    # checkpoints at 4, 8 and the last step; the evaluations at 2 and 6 leave their weights
    assert [(w["step"], w["checkpoint"]) for w in list_weights(directory)] == [
        (2, False), (4, True), (6, False), (8, True), (10, True)]
    at_6 = next(e for e in events if e["kind"] == "attention" and e["step"] == 6)
    snapshot = next(s for s in list_snapshots(directory) if s["step"] == 6)
    recomputed, sent = overview_of(load_model(snapshot["path"])[0], at_6)
    assert (recomputed - sent).abs().max() <= 1 / 255
