import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import TrainConfig, build_model, parse_spec, train
from engine.train import configure_optimizer, lr_at

ROOT = Path(__file__).resolve().parents[2]

EVENT_KEYS = {
    "start": {"kind", "total_steps", "params", "vocab_size", "device", "tokens_per_step", "train_tokens", "val_tokens"},
    "step": {"kind", "step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed", "eta"},
    "eval": {"kind", "step", "train_loss", "val_loss", "accuracy", "sample"},
    "end": {"kind", "step", "reason", "elapsed", "final_val_loss"},
}


def run(job: dict, **kw):
    events = []
    result = train(parse_spec(job), on_event=events.append, **kw)
    return result, events


def test_events_have_the_documented_shapes(tiny_job):
    tiny_job["train"] |= {"steps": 7, "log_interval": 3, "eval_interval": 5}
    result, events = run(tiny_job)
    json.dumps(events, allow_nan=False)  # plain JSON all the way down
    assert [e["kind"] for e in events] == ["start", "step", "eval", "step", "step", "eval", "end"]
    for e in events:
        assert set(e) == EVENT_KEYS[e["kind"]]
    assert [e["step"] for e in events if e["kind"] == "step"] == [3, 6, 7]  # every log_interval, and the last
    assert [e["step"] for e in events if e["kind"] == "eval"] == [5, 7]  # every eval_interval, and the last
    start, end = events[0], events[-1]
    assert start["total_steps"] == 7 and start["params"] == result.model.num_params()
    assert start["device"] == "cpu" and start["tokens_per_step"] == 16 * 7  # rows of a 3-letter copy example
    assert end == {**end, "kind": "end", "step": 7, "reason": "completed", "final_val_loss": events[-2]["val_loss"]}
    sample = events[-2]["sample"]
    assert sample["prompt"].endswith(">") and len(sample["completion"]) == len(sample["expected"]) == 4
    assert 0.0 <= events[-2]["accuracy"] <= 1.0


def test_moe_runs_report_routing_and_aux_loss(tiny_job):
    tiny_job["model"] |= {"n_expert": 4, "top_k": 2, "moe_every": 2}
    tiny_job["train"] |= {"steps": 12, "eval_interval": 5}
    result, events = run(tiny_job)
    json.dumps(events, allow_nan=False)
    steps = [e for e in events if e["kind"] == "step"]
    assert all(set(e) == EVENT_KEYS["step"] | {"aux_loss"} and e["aux_loss"] > 0 for e in steps)
    moe = [e for e in events if e["kind"] == "moe"]
    assert [e["step"] for e in moe] == [5, 10, 12]  # every eval step and every 10th
    kinds = [e["kind"] for e in events]
    assert kinds[kinds.index("moe") + 1] == "eval"  # the routing of the step the evaluation follows
    for e in moe:
        (layer,) = e["layers"]
        assert set(layer) == {"layer", "tokens_per_expert", "dropped", "aux_loss", "z_loss"} and layer["layer"] == 1
        assert sum(layer["tokens_per_expert"]) + layer["dropped"] == 2 * 16 * 7  # top_k choices of each token
    # the reported loss is the language-model loss, without the MoE terms
    assert result.train_losses[-1] == pytest.approx(steps[-1]["loss"])
    tiny_job["model"]["n_expert"] = 0
    _, dense_events = run(tiny_job)
    assert not any(e["kind"] == "moe" for e in dense_events)


def test_throughput_and_eta_are_positive(tiny_job):
    _, events = run(tiny_job)
    steps = [e for e in events if e["kind"] == "step"]
    assert len(steps) == tiny_job["train"]["steps"]
    for e in steps:
        assert isinstance(e["tokens_per_s"], float) and e["tokens_per_s"] > 0 and math.isfinite(e["tokens_per_s"])
        assert isinstance(e["eta"], float) and e["eta"] > 0  # the final evaluation is still to come
        assert e["elapsed"] > 0
    assert [e["elapsed"] for e in steps] == sorted(e["elapsed"] for e in steps)


def test_same_seed_same_losses(tiny_job):
    tiny_job["model"]["dropout"] = 0.1  # dropout draws from the seeded global RNG too
    a, _ = run(tiny_job)
    b, _ = run(tiny_job)
    assert a.train_losses == b.train_losses and a.val_losses == b.val_losses
    tiny_job["train"]["seed"] = 7
    c, _ = run(tiny_job)
    assert c.train_losses != a.train_losses


def test_cancellation_stops_early(tiny_job):
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 3

    result, events = run(tiny_job, should_stop=should_stop)
    assert result.cancelled and result.steps_done == 3 and len(result.train_losses) == 3
    assert events[-1]["kind"] == "end" and events[-1]["reason"] == "cancelled" and events[-1]["step"] == 3
    assert events[-1]["final_val_loss"] is None  # no evaluation had happened yet


def test_copy_is_solved(tiny_job):
    tiny_job["train"] |= {"steps": 60, "eval_interval": 30, "batch_size": 32}
    tiny_job["model"]["n_embd"] = 64
    result, events = run(tiny_job)
    assert result.final_accuracy >= 0.9
    assert result.val_losses[-1][1] < 0.3
    final = [e for e in events if e["kind"] == "eval"][-1]
    assert final["sample"]["completion"] == final["sample"]["expected"]


def test_text_source_trains_and_samples(tiny_job, text_file):
    tiny_job["data"] = {"source": "text", "path": text_file, "val_fraction": 0.2}
    tiny_job["train"] |= {"sample_tokens": 10}
    result, events = run(tiny_job)
    final = [e for e in events if e["kind"] == "eval"][-1]
    assert final["accuracy"] is None and result.final_accuracy is None
    assert final["sample"]["expected"] is None and len(final["sample"]["completion"]) == 10
    assert result.train_losses[-1] < result.train_losses[0]


def test_cuda_without_a_gpu_is_a_clear_error(tiny_job, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tiny_job["train"]["device"] = "cuda"
    with pytest.raises(RuntimeError, match="torch.cuda.is_available"):
        run(tiny_job)


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(1, cfg) == pytest.approx(0.1)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert lrs == sorted(lrs, reverse=True)
    assert lr_at(1, TrainConfig(steps=5, warmup_steps=0, lr=1.0)) == pytest.approx(1.0, abs=0.2)


def test_weight_decay_only_on_matrices(tiny_config):
    model = build_model(tiny_config)
    decay, no_decay = configure_optimizer(model, TrainConfig(), torch.device("cpu")).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])


def test_reported_grad_norm_is_before_clipping(tiny_job):
    tiny_job["train"] |= {"grad_clip": 1e-3, "steps": 2, "warmup_steps": 1}
    _, events = run(tiny_job)
    assert all(e["grad_norm"] > 1e-3 for e in events if e["kind"] == "step")


def test_progress_bar(tiny_job, capsys):
    tiny_job["train"]["steps"] = 3
    train(parse_spec(tiny_job), progress=True)
    assert "3/3" in capsys.readouterr().err


def test_command_line(tiny_job, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_job))
    done = subprocess.run([sys.executable, "-m", "engine.train", str(spec)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "final val loss" in done.stdout and "held-out accuracy" in done.stdout
    assert "Warning" not in done.stderr
    tiny_job["model"]["n_head"] = 5
    spec.write_text(json.dumps(tiny_job))
    done = subprocess.run([sys.executable, "-m", "engine.train", str(spec)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "model.n_head: n_head (5) must divide n_embd (32)" in done.stdout


def test_compiled_training_matches_eager(tiny_job):
    """``compile`` runs the same computation through torch.compile: same losses to float
    rounding, and the compiling step stays out of the throughput figures."""
    tiny_job["train"] |= {"steps": 4, "eval_interval": 4, "log_interval": 1}
    eager, _ = run(tiny_job)
    tiny_job["train"]["compile"] = True
    compiled, events = run(tiny_job)
    assert compiled.steps_done == 4
    assert compiled.train_losses == pytest.approx(eager.train_losses, rel=1e-4, abs=1e-5)
    steps = [e for e in events if e["kind"] == "step"]
    assert all(e["tokens_per_s"] > 0 for e in steps)
