import math

import pytest
import torch

from engine import ConfigError, TrainConfig, build_model, parse_spec, train
from engine.training.optim import OPTIMIZERS, SCHEDULES, WSD_DECAYS, Lion, configure_optimizer, lr_at

# a peak learning rate at which each optimizer learns the tiny copy task within a few dozen steps
# (Lion moves every weight by lr: a smaller one; Adafactor's step is lr × RMS(w): a larger one)
LEARNING_RATES = {"adamw": 1e-2, "sgd": 0.3, "lion": 2e-3, "adafactor": 0.1}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_lowers_the_loss(tiny_job, name):
    tiny_job["train"] |= {"optimizer": name, "lr": LEARNING_RATES.get(name, 1e-2), "steps": 30, "eval_interval": 30}
    result = train(parse_spec(tiny_job))
    first, last = result.train_losses[:3], result.train_losses[-3:]
    assert all(math.isfinite(x) for x in result.train_losses)
    assert sum(last) / 3 < 0.9 * sum(first) / 3, result.train_losses


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_weight_decay_only_on_matrices(tiny_config, name):
    model = build_model(tiny_config)
    decay, no_decay = configure_optimizer(model, TrainConfig(optimizer=name), torch.device("cpu")).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])


def test_optimizer_settings_reach_torch(tiny_config):
    model = build_model(tiny_config)
    adamw = configure_optimizer(model, TrainConfig(beta1=0.8, beta2=0.99), torch.device("cpu"))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.99)
    sgd = configure_optimizer(model, TrainConfig(optimizer="sgd", momentum=0.5), torch.device("cpu"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.5
    lion = configure_optimizer(model, TrainConfig(optimizer="lion", beta2=0.99), torch.device("cpu"))
    assert isinstance(lion, Lion) and lion.defaults["betas"] == (0.9, 0.99)


def test_lion_step_equals_the_hand_computation():
    """Two steps, so the second uses a non-zero momentum: c = β1·m + (1 − β1)·g,
    w ← w − lr·(sign(c) + λ·w), m ← β2·m + (1 − β2)·g."""
    lr, b1, b2, wd = 0.1, 0.9, 0.99, 0.5
    w0 = torch.tensor([1.0, -2.0, 0.5, 3.0])
    g1 = torch.tensor([0.3, -0.1, 0.0, 2.0])
    g2 = torch.tensor([-1.0, 0.05, 0.2, -0.001])
    p = torch.nn.Parameter(w0.clone())
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    w, m = w0.clone(), torch.zeros(4)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        c = b1 * m + (1 - b1) * g
        w = w - lr * (torch.sign(c) + wd * w)
        m = b2 * m + (1 - b2) * g
        torch.testing.assert_close(p.detach(), w)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m)
    # step 2: m = 0.01·g1, c = 0.9·0.01·g1 + 0.1·g2 -> the signs of [-0.0973, 0.0041, 0.02, 0.0179]
    assert torch.sign(0.9 * 0.01 * g1 + 0.1 * g2).tolist() == [-1.0, 1.0, 1.0, 1.0]


def test_cosine_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(1, cfg) == pytest.approx(0.1) and lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55) and lr_at(100, cfg) == pytest.approx(0.1)


def test_linear_schedule():
    cfg = TrainConfig(schedule="linear", steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(5, cfg) == pytest.approx(0.5) and lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55) and lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(28, cfg) == pytest.approx(1.0 - 0.9 * 0.2)


def test_constant_schedule():
    cfg = TrainConfig(schedule="constant", steps=100, warmup_steps=10, lr=0.5, min_lr_ratio=0.1)
    assert lr_at(5, cfg) == pytest.approx(0.25)
    assert [lr_at(s, cfg) for s in (10, 11, 50, 100)] == [0.5] * 4


def test_wsd_schedule():
    cfg = TrainConfig(schedule="wsd", steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_at(5, cfg) == pytest.approx(0.5)
    assert [lr_at(s, cfg) for s in (10, 50, 80)] == [1.0, 1.0, 1.0]  # stable until the last 20 steps
    assert lr_at(90, cfg) == pytest.approx(0.5) and lr_at(100, cfg) == pytest.approx(0.0)
    sqrt = TrainConfig(**{**cfg.to_dict(), "decay_shape": "1-sqrt", "min_lr_ratio": 0.1})
    assert lr_at(80, sqrt) == 1.0
    assert lr_at(85, sqrt) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.25)))
    assert lr_at(100, sqrt) == pytest.approx(0.1)
    # a decay longer than the run after warm-up starts at the end of warm-up
    early = TrainConfig(schedule="wsd", steps=20, warmup_steps=10, lr=1.0, min_lr_ratio=0.0, decay_fraction=0.9)
    assert lr_at(10, early) == 1.0 and lr_at(15, early) == pytest.approx(0.5)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("shape", list(WSD_DECAYS))
def test_every_schedule_warms_up_then_stays_within_bounds(name, shape):
    cfg = TrainConfig(schedule=name, decay_shape=shape, steps=60, warmup_steps=6, lr=2.0, min_lr_ratio=0.25)
    lrs = [lr_at(s, cfg) for s in range(1, 61)]
    assert lrs[:6] == pytest.approx([2.0 * s / 6 for s in range(1, 7)])
    assert all(0.5 - 1e-9 <= x <= 2.0 + 1e-9 for x in lrs[5:])
    assert lrs[5:] == sorted(lrs[5:], reverse=True)  # none rises after warm-up


def test_no_warmup_starts_at_the_peak():
    for name in SCHEDULES:
        assert lr_at(1, TrainConfig(schedule=name, steps=100, warmup_steps=0, lr=1.0)) == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("key,value,message", [
    ("optimizer", "adam", "unknown optimizer 'adam'; choose from ['adamw', 'sgd', 'lion', 'adafactor']"),
    ("schedule", "step", "unknown schedule 'step'; choose from ['cosine', 'linear', 'constant', 'wsd']"),
    ("on_nonfinite", "ignore", "unknown on_nonfinite 'ignore'; choose from ['skip', 'lower_lr', 'stop']"),
    ("beta2", 1.0, "beta2 must be < 1 (got 1)"),
    ("momentum", -0.1, "momentum must be ≥ 0 (got -0.1)"),
    ("decay_fraction", 0, "decay_fraction must be > 0 (got 0)"),
    ("grad_accum_steps", 0, "grad_accum_steps must be ≥ 1 (got 0)"),
])
def test_training_options_are_validated(key, value, message):
    with pytest.raises(ConfigError) as e:
        parse_spec({"train": {key: value}})
    assert e.value.errors == {f"train.{key}": message}


def test_options_show_only_where_they_apply():
    from engine import field_specs

    shown = {s["key"]: s.get("show_if") for s in field_specs() if s["section"] == "train"}
    assert shown["momentum"] == {"train.optimizer": ["sgd"]}
    assert shown["beta1"] == shown["beta2"] == {"train.optimizer": ["adamw", "lion"]}
    assert shown["decay_fraction"] == shown["decay_shape"] == {"train.schedule": ["wsd"]}
    assert shown["optimizer"] is None and shown["grad_accum_steps"] is None
