"""Objectives: BERT masking statistics, T5 span corruption, and each family trained end to end."""

import pytest
import torch

import engine
from engine.data.datasets import load_data
from engine.training.objectives import (
    OBJECTIVES,
    TRAINING_OBJECTIVES,
    build_objective,
    mask_tokens,
    span_corrupt,
    span_counts,
    span_restore,
)

from ..conftest import TINY


def test_mlm_masking_statistics():
    rows = torch.randint(10, (400, 50))  # ids 0..9 of a 10-symbol vocabulary; [MASK] is 10
    inputs, targets = mask_tokens(rows, probability=0.15, mask_id=10, vocab_size=10,
                                  generator=torch.Generator().manual_seed(0))
    chosen = targets != -1
    assert torch.equal(targets[chosen], rows[chosen])
    assert torch.equal(inputs[~chosen], rows[~chosen])  # unchosen tokens are left alone
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.01)
    n = chosen.sum().item()
    masked = (inputs == 10) & chosen
    kept = (inputs == rows) & chosen  # includes random draws that hit the same token (1/10 of 10%)
    assert masked.sum().item() / n == pytest.approx(0.8, abs=0.02)
    assert kept.sum().item() / n == pytest.approx(0.1 + 0.1 / 10, abs=0.02)
    assert inputs.max() <= 10


def test_every_row_gets_a_mask():
    rows = torch.randint(5, (64, 3))
    _, targets = mask_tokens(rows, probability=0.01, mask_id=5, vocab_size=5, generator=torch.Generator())
    assert (targets != -1).any(dim=1).all()


@pytest.mark.parametrize("length,density,span", [(32, 0.15, 3.0), (16, 0.5, 2.0), (9, 0.15, 3.0), (64, 0.3, 1.0)])
def test_span_corruption_reconstructs_the_text(length, density, span):
    generator = torch.Generator().manual_seed(length)
    sentinel = 100
    n_noise, n_spans = span_counts(length, density, span)
    for _ in range(20):
        row = torch.randint(50, (length,)).tolist()
        inputs, targets = span_corrupt(row, noise_density=density, mean_span_length=span, sentinel=sentinel,
                                       generator=generator)
        assert len(inputs) == length - n_noise + n_spans and len(targets) == n_noise + n_spans
        assert [t for t in inputs if t >= sentinel] == [sentinel + i for i in range(n_spans)]
        assert targets[0] == sentinel  # the target starts with the first sentinel, then what it hid
        assert span_restore(inputs, targets, sentinel, n_spans) == row


def _events(model, data, steps=60):
    spec = engine.parse_spec({
        "model": {**TINY, **model},
        "data": data,
        "train": {"steps": steps, "batch_size": 16, "lr": 1e-2, "warmup_steps": min(5, steps),
                  "eval_interval": steps // 2, "eval_iters": 2},
    })
    events = []
    engine.train(spec, on_event=events.append)
    return spec, events


def test_encoder_reduces_mlm_loss_and_reports_masked_accuracy():
    spec, events = _events({"family": "encoder"}, {"task": "copy", "task_length": 3}, steps=60)
    assert spec.model.vocab_size == 18 + 1  # the task's 18 symbols and [MASK]
    evals = [e for e in events if e["kind"] == "eval"]
    steps = [e for e in events if e["kind"] == "step"]
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert 0 <= evals[-1]["accuracy"] <= 1
    sample = evals[-1]["sample"]
    assert "[MASK]" in sample["prompt"]
    assert len(sample["completion"]) == len(sample["expected"]) == 8  # "abc>abc." with the fills


def test_encoder_on_text_is_scored(text_file):
    _, events = _events({"family": "encoder"}, {"source": "text", "path": text_file}, steps=4)
    assert [e for e in events if e["kind"] == "eval"][-1]["accuracy"] is not None


def test_encoder_decoder_span_corruption_on_text(text_file):
    spec, events = _events({"family": "encoder_decoder"}, {"source": "text", "path": text_file}, steps=4)
    data_vocab = engine.describe_data(spec.data)["vocab_size"]
    n_spans = span_counts(spec.model.block_size, 0.15, 3.0)[1]
    assert spec.model.vocab_size == data_vocab + 1 + n_spans  # start token and sentinels
    ev = [e for e in events if e["kind"] == "eval"][-1]
    assert ev["accuracy"] is None
    assert "<X0>" in ev["sample"]["prompt"] and ev["sample"]["expected"].startswith("<X0>")


@pytest.mark.parametrize("family", list(OBJECTIVES))
def test_batches_feed_the_model(family):
    spec = engine.parse_spec({"model": {**TINY, "family": family}, "data": {"task": "reverse", "task_length": 4}})
    data = load_data(spec.data)
    objective = OBJECTIVES[family](data, spec.model)
    batch = objective.get_batch("train", 3, torch.Generator().manual_seed(0))
    logits, loss = engine.build_model(spec.model)(*batch)
    assert logits.shape[:2] == batch[-1].shape and loss.item() > 0
    assert batch[-1].max() < spec.model.vocab_size


@pytest.mark.parametrize("objective,family", [(o, f) for o, families in TRAINING_OBJECTIVES.items() for f in families])
def test_every_training_objective_steps_through_its_wrapped_forward(objective, family):
    spec = engine.parse_spec({"model": {**TINY, "family": family, "block_size": 48},
                              "data": {"task": "reverse", "task_length": 4}, "train": {"objective": objective}})
    built = build_objective(load_data(spec.data, objective), spec.model, spec.train)
    model = engine.build_model(spec.model)
    forward = built.wrap(model, model, spec=spec)
    batch = built.get_batch("train", 3, torch.Generator().manual_seed(0))
    logits, loss = forward(*batch)
    loss.backward()
    assert loss.item() > 0 and model.wte.weight.grad is not None
    assert set(built.step_metrics()) <= {"chosen_logp", "rejected_logp", "reward_margin", "reward_accuracy"}
