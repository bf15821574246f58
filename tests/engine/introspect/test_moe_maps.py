import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

import engine
from engine.data.datasets import load_data
from engine.introspect.moe_maps import capture_routing, moe_layers, routing_event, routing_snapshot
from engine.nn.moe import MoE
from engine.training.objectives import OBJECTIVES

from ..conftest import TINY, TINY_JOB

CPU = torch.device("cpu")
# capacity 1.0 with top-2 over 4 experts: a short input already overflows some expert
MOE = {"n_expert": 4, "top_k": 2, "capacity_factor": 1.0}


def setup(family="decoder", **model):
    spec = engine.parse_spec({**TINY_JOB, "model": {**TINY, "family": family, **MOE, **model}})
    objective = OBJECTIVES[family](load_data(spec.data), spec.model)
    return engine.build_model(spec.model), objective


def reference(moe: MoE, x: torch.Tensor):
    """Token by token: softmax, top-k, renormalise; a choice is dropped when its expert already
    took ``capacity`` choices of earlier tokens (first come, first served)."""
    xs = x.reshape(-1, x.size(-1)).float()
    cap, taken = moe.capacity(xs.size(0)), [0] * moe.n_expert
    experts, weights, dropped = [], [], []
    for tok in xs:
        w, idx = torch.topk(F.softmax(tok @ moe.router.weight.T, dim=-1), moe.top_k)
        if moe.renormalize:
            w = w / w.sum()
        experts.append(idx.tolist())
        weights.append(w.tolist())
        dropped.append([])
        for e in idx.tolist():
            dropped[-1].append(taken[e] >= cap)
            taken[e] += taken[e] < cap
    return experts, weights, dropped


@pytest.mark.parametrize("model", [{}, {"top_k": 1}, {"moe_every": 2, "shared_expert": True, "capacity_factor": 0.5},
                                   {"moe_renormalize": False, "capacity_factor": 0.0}],
                         ids=["top2", "top1", "every2-shared", "dropless"])
def test_routing_is_the_layers_own(model):
    m, objective = setup(**model)
    inputs = {}
    hooks = [moe.register_forward_pre_hook(lambda mod, args, i=i: inputs.__setitem__(i, args[0]))
             for i, _, moe in moe_layers(m)]
    event = routing_event(m, objective, CPU, contextlib.nullcontext, 7, max_tokens=1000)
    for h in hooks:
        h.remove()
    stats = {s["layer"]: s for s in m.moe_stats()}
    assert [layer["layer"] for layer in event["layers"]] == sorted(stats) == sorted(inputs)
    assert event["step"] == 7 and event["n_expert"] == 4 and event["top_k"] == m.config.top_k
    for layer in event["layers"]:
        moe = m.h[layer["layer"]].mlp
        experts, weights, dropped = reference(moe, inputs[layer["layer"]])
        assert layer["experts"] == experts
        assert torch.allclose(torch.tensor(layer["weights"]), torch.tensor(weights), atol=6e-4)
        assert layer["dropped"] == dropped
        # every token-choice of the input is shown, so the drops are the layer's count
        assert sum(map(sum, layer["dropped"])) == stats[layer["layer"]]["dropped"]
        assert len(layer["experts"]) == len(event["tokens"]) == event["window"][1]
    if model.get("capacity_factor") == 0.0:
        assert not any(any(d) for layer in event["layers"] for d in layer["dropped"])
    else:
        assert any(any(d) for layer in event["layers"] for d in layer["dropped"])  # the case is tested


def test_is_json_ready_and_compact():
    m, objective = setup()
    event = routing_event(m, objective, CPU, contextlib.nullcontext, 3)
    assert json.loads(json.dumps(event, allow_nan=False)) == event
    assert event["kind"] == "routing" and event["tokens"] and all(isinstance(t, str) for t in event["tokens"])
    assert len(json.dumps(event)) < 4000  # 2 layers × 13 tokens × top-2


def test_recording_leaves_the_output_and_the_training_path_alone():
    m, objective = setup()
    m.eval()
    idx = torch.randint(0, m.config.vocab_size, (2, 12))
    plain, _ = m(idx)
    with capture_routing(m) as capture:
        recorded, _ = m(idx)
    assert torch.equal(plain, recorded)
    assert sorted(capture.layers) == [0, 1] and capture.layers[0]["experts"].shape == (2, 12, 2)
    assert all(not moe.record and moe.routing is None for _, _, moe in moe_layers(m))
    m(idx)
    assert all(moe.routing is None for _, _, moe in moe_layers(m))


def test_none_without_experts_and_no_forward_run():
    spec = engine.parse_spec(TINY_JOB)
    model = engine.build_model(spec.model)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    assert routing_event(model, OBJECTIVES["decoder"](load_data(spec.data), spec.model), CPU,
                         contextlib.nullcontext, 1) is None
    assert not calls


def test_window_keeps_the_last_positions():
    m, objective = setup()
    full = routing_event(m, objective, CPU, contextlib.nullcontext, 1, max_tokens=1000)
    short = routing_event(m, objective, CPU, contextlib.nullcontext, 1, max_tokens=5)
    n = full["window"][1]
    assert short["window"] == [n - 5, n] and short["tokens"] == full["tokens"][-5:]
    for a, b in zip(full["layers"], short["layers"]):
        assert b["experts"] == a["experts"][-5:] and b["dropped"] == a["dropped"][-5:]


def test_encoder_decoder_routes_each_stack_on_its_own_input():
    m, objective = setup("encoder_decoder", moe_every=1)
    event = routing_event(m, objective, CPU, contextlib.nullcontext, 1)
    stats = m.moe_stats()
    assert [(layer["layer"], layer["input"]) for layer in event["layers"]] == [
        (0, "source_tokens"), (1, "source_tokens"), (2, "tokens"), (3, "tokens")]
    assert [layer["layer"] for layer in stats] == [0, 1, 2, 3]
    for layer in event["layers"]:
        assert len(layer["experts"]) == len(event[layer["input"]])
        assert sum(map(sum, layer["dropped"])) == stats[layer["layer"]]["dropped"]


def test_snapshot_of_any_input():
    m, objective = setup()
    tokenizer = objective.data.tokenizer
    idx = torch.tensor([tokenizer.encode("abc>abc")])
    event = routing_snapshot(m, idx, tokenizer, step=4)
    assert event["tokens"] == ["a", "b", "c", ">", "a", "b", "c"] and event["window"] == [0, 7]
    assert m.training  # the mode is restored


def test_train_emits_routing_after_each_evaluation():
    spec = engine.parse_spec({**TINY_JOB, "model": {**TINY, **MOE}})
    kinds, routed = [], []

    def record(event):
        kinds.append(event["kind"])
        if event["kind"] == "routing":
            routed.append(event)

    engine.train(spec, on_event=record)
    evals = [i for i, k in enumerate(kinds) if k == "eval"]
    assert len(routed) == len(evals) > 0
    for i in evals:  # eval, attention, routing
        assert kinds[i + 1: i + 3] == ["attention", "routing"]
    assert [e["step"] for e in routed] == [5, 10, 12]
    kinds.clear()
    engine.train(engine.parse_spec(TINY_JOB), on_event=record)
    assert "routing" not in kinds
