"""Direct preference optimisation: the loss against a hand computation, its value at the start,
preference data (synthetic and JSONL) and its errors, and DPO trained end to end."""

import json
import math

import pytest
import torch

import engine
from engine import ConfigError
from engine.data.chat import END, corrupt
from engine.data.datasets import load_data
from engine.training.objectives import build_objective
from engine.training.preference import DPO, sequence_logprobs

from ..conftest import TINY

CHAT = {**TINY, "block_size": 48}
DPO_TRAIN = {"objective": "dpo", "dpo_beta": 0.5, "steps": 60, "batch_size": 16, "lr": 1e-2, "warmup_steps": 5,
             "eval_interval": 20, "eval_iters": 2, "attention_maps": False}


def _objective(task="sort", n=3, beta=0.5):
    spec = engine.parse_spec({"model": CHAT, "data": {"task": task, "task_length": n},
                              "train": {"objective": "dpo", "dpo_beta": beta}})
    return spec, build_objective(load_data(spec.data, "dpo"), spec.model, spec.train)


def _jsonl(tmp_path, lines):
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return str(path)


def test_synthetic_pairs_share_the_prompt_and_differ_in_one_item():
    spec, objective = _objective()
    x, y = objective.get_batch("train", 5, torch.Generator().manual_seed(0))
    assert x.shape[0] == 10  # the 5 chosen rows, then the 5 rejected ones
    decode = objective.data.tokenizer.decode
    for i in range(5):
        chosen, rejected = decode(x[i].tolist()), decode(x[i + 5].tolist())
        prompt, answer = chosen.split("<|assistant|>\n")
        assert prompt.startswith("<|user|>\nSort: ") and rejected.startswith(prompt)
        items = prompt.removeprefix("<|user|>\nSort: ").removesuffix("\n")
        assert answer.startswith("".join(sorted(items)))  # chosen: the right answer
        wrong = rejected.split("<|assistant|>\n")[1]
        assert sum(a != b for a, b in zip(answer, wrong)) == 1
        assert decode(y[i][y[i] != -1].tolist()) == "".join(sorted(items)) + END
    assert corrupt("42", torch.Generator().manual_seed(1)) != "42"


def test_dpo_loss_equals_a_hand_computation():
    spec, objective = _objective(beta=0.3)
    torch.manual_seed(0)
    policy, reference = engine.build_model(spec.model), engine.build_model(spec.model)
    policy.eval()
    objective.reference = reference.eval()  # a different model, so the margins are not zero
    x, y = objective.get_batch("train", 3, torch.Generator().manual_seed(0))
    logits, _ = policy(x)
    loss, stats = objective.loss(logits, y, x)

    def logp(model, row):  # Σ over response tokens of log p(target | prefix), one position at a time
        total = 0.0
        for t in range(x.size(1)):
            if y[row, t] != -1:
                out, _ = model(x[row : row + 1, : t + 1])
                total += torch.log_softmax(out[0, -1].double(), -1)[y[row, t]].item()
        return total

    with torch.no_grad():
        terms = []
        for i in range(3):
            margin = 0.3 * ((logp(policy, i) - logp(reference, i)) - (logp(policy, i + 3) - logp(reference, i + 3)))
            terms.append(margin)
    expected = sum(-math.log(1 / (1 + math.exp(-m))) for m in terms) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert stats["reward_margin"].item() == pytest.approx(sum(terms) / 3, rel=1e-4, abs=1e-6)
    assert stats["reward_accuracy"].item() == pytest.approx(sum(m > 0 for m in terms) / 3)


def test_sequence_logprobs_skip_unscored_positions():
    logits = torch.randn(2, 4, 5)
    y = torch.tensor([[-1, 2, 3, -1], [-1, -1, -1, 0]])
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([logp[0, 1, 2] + logp[0, 2, 3], logp[1, 3, 0]])
    assert torch.allclose(sequence_logprobs(logits, y), expected)


def test_at_the_start_the_loss_is_log_2_and_the_margins_zero():
    spec, objective = _objective()
    torch.manual_seed(0)
    model = engine.build_model(spec.model)
    forward = objective.wrap(model, model)
    assert not any(p.requires_grad for p in objective.reference.parameters())
    x, y = objective.get_batch("train", 8, torch.Generator().manual_seed(0))
    model.eval()  # no dropout: the policy is the reference exactly
    _, loss = forward(x, y)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    metrics = objective.step_metrics()
    assert metrics["reward_margin"] == pytest.approx(0.0, abs=1e-6) and metrics["reward_accuracy"] == 0.0
    assert metrics["chosen_logp"] < 0 and metrics["rejected_logp"] < 0
    assert objective.step_metrics() == {}  # means since the last call


def test_dpo_raises_reward_accuracy_and_margin():
    spec = engine.parse_spec({"model": CHAT, "data": {"task": "sort", "task_length": 3}, "train": DPO_TRAIN})
    events = []
    engine.train(spec, on_event=events.append)
    steps = [e for e in events if e["kind"] == "step"]
    evals = [e for e in events if e["kind"] == "eval"]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-3) and steps[0]["reward_margin"] == pytest.approx(0)
    for key in ("chosen_logp", "rejected_logp", "reward_margin", "reward_accuracy"):
        assert key in steps[-1] and key in evals[-1]
    assert evals[-1]["reward_margin"] > 0.3 and evals[-1]["accuracy"] == evals[-1]["reward_accuracy"] > 0.6
    assert evals[-1]["val_loss"] < math.log(2) - 0.1
    assert sum(s["reward_accuracy"] for s in steps[-10:]) / 10 > 0.6
    sample = evals[-1]["sample"]
    assert sample["prompt"].startswith("<|user|>\nSort: ") and END not in sample["expected"]


def test_same_seed_same_dpo_run():
    spec = engine.parse_spec({"model": CHAT, "data": {"task": "sort", "task_length": 3},
                              "train": {**DPO_TRAIN, "steps": 8, "eval_interval": 8}})
    runs = []
    for _ in range(2):
        events = []
        engine.train(spec, on_event=events.append)
        runs.append([(e["loss"], e["reward_margin"]) for e in events if e["kind"] == "step"])
    assert runs[0] == runs[1]


def test_resuming_rebuilds_the_seeded_start_without_touching_the_rng():
    spec, _ = _objective()
    torch.manual_seed(spec.train.seed)
    start = engine.build_model(spec.model)
    trained = engine.build_model(spec.model)  # other weights, as after some steps
    state = torch.random.get_rng_state()
    reference = DPO.starting_model(trained, spec, None)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(start.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)


def test_preference_file_trains(tmp_path):
    lines = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
             for a in range(5) for b in range(5)]
    spec = engine.parse_spec({"model": CHAT, "data": {"source": "jsonl", "path": _jsonl(tmp_path, lines)},
                              "train": {**DPO_TRAIN, "steps": 4, "warmup_steps": 1, "eval_interval": 4,
                                        "batch_size": 4}})
    events = []
    engine.train(spec, on_event=events.append)
    ev = [e for e in events if e["kind"] == "eval"][-1]
    assert 0 <= ev["accuracy"] <= 1 and ev["sample"]["expected"] == "7"  # 4+3, the first held-out line
    assert "preference pairs" in engine.describe_data(spec.data, "dpo")["description"]


def test_preference_file_errors(tmp_path):
    def error(lines):
        with pytest.raises(ConfigError) as e:
            engine.parse_spec({"model": CHAT, "data": {"source": "jsonl", "path": _jsonl(tmp_path, lines)},
                               "train": {"objective": "dpo"}})
        return e.value.errors["data.path"]

    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        engine.parse_spec({"model": CHAT, "data": {"source": "jsonl", "path": str(path)},
                           "train": {"objective": "dpo"}})
    assert "no examples" in e.value.errors["data.path"]
    message = error([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}])
    assert "line 2" in message and "'rejected'" in message
    # an SFT line is not a preference line
    assert "'chosen'" in error([{"prompt": "a", "response": "b"}] * 2)


def _run(job, **kw):
    events = []
    result = engine.train(engine.parse_spec(job), on_event=events.append, **kw)
    return result, events


def test_resumed_dpo_run_continues_the_same_curve(tmp_path):
    from engine.training.checkpoint import latest_checkpoint

    # the reference is rebuilt on resume (the seeded start), not copied from the resumed weights
    job = {"model": {**CHAT, "dropout": 0.1}, "data": {"task": "sort", "task_length": 3},
           "train": {**DPO_TRAIN, "steps": 8, "eval_interval": 4}}
    whole, _ = _run(job)
    calls = {"n": 0}

    def stop_after_4():
        calls["n"] += 1
        return calls["n"] > 4

    directory = str(tmp_path / "ckpt")
    first, _ = _run(job, checkpoint_dir=directory, checkpoint_every=4, should_stop=stop_after_4)
    rest, events = _run(job, checkpoint_dir=directory, resume_from=latest_checkpoint(directory))
    assert first.train_losses + rest.train_losses == pytest.approx(whole.train_losses, abs=1e-6)
    assert [v for _, v in rest.val_losses] == pytest.approx([v for _, v in whole.val_losses[-1:]], abs=1e-6)


def test_sft_then_dpo_from_its_checkpoint(tmp_path):
    from engine.training.checkpoint import latest_checkpoint

    # bytes, so the SFT and DPO sets share a tokenizer and a vocabulary
    data = {"task": "sort", "task_length": 3, "tokenizer": "byte"}
    directory = str(tmp_path / "sft")
    _run({"model": CHAT, "data": data, "train": {**DPO_TRAIN, "objective": "sft", "steps": 60}},
         checkpoint_dir=directory)
    dpo = {"model": CHAT, "data": data, "train": {**DPO_TRAIN, "steps": 2, "eval_interval": 2, "warmup_steps": 1}}
    _, scratch = _run(dpo)
    _, tuned = _run(dpo, init_from=latest_checkpoint(directory))
    first = [e for e in tuned if e["kind"] == "step"][0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)  # the reference is the SFT model itself
    # the SFT model already gives the right answers far more probability than a fresh one
    assert first["chosen_logp"] > [e for e in scratch if e["kind"] == "step"][0]["chosen_logp"] + 10
