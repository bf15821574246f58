"""engine.introspect.attention_maps: the "attention" event of one held-out input."""

import contextlib
import json

import torch

import engine
from engine import build_model, parse_spec
from engine.data.datasets import load_data
from engine.introspect.attention_maps import attention_event, attention_snapshot, decode_maps, display_token, eval_input
from engine.training.objectives import OBJECTIVES


def setup(job, **model):
    spec = parse_spec({**job, "model": {**job["model"], **model}})
    torch.manual_seed(0)
    objective = OBJECTIVES[spec.model.family](load_data(spec.data), spec.model)
    return build_model(spec.model), objective


def maps_of(stack):
    return decode_maps(stack["maps"], stack["shape"])


def test_decoder_event_shapes_tokens_and_rows(tiny_job):
    model, objective = setup(tiny_job)
    event = attention_event(model, objective, torch.device("cpu"), contextlib.nullcontext, 7)
    json.dumps(event)  # JSON-ready
    assert event["kind"] == "attention" and event["step"] == 7
    assert set(event["stacks"]) == {"self"}
    inputs, _ = eval_input(objective)
    t = inputs[0].size(1)
    assert event["window"] == [0, t] and len(event["tokens"]) == t
    assert event["tokens"] == [objective.data.tokenizer.decode([i]) for i in inputs[0][0].tolist()]
    stack = event["stacks"]["self"]
    assert (stack["n_layer"], stack["n_head"], stack["shape"]) == (2, 4, [2, 4, t, t])
    w = maps_of(stack)
    assert (w.sum(-1) - 1).abs().max() <= 2 / 255 * t  # rows are distributions, up to rounding
    assert (w.triu(diagonal=1) == 0).all()  # causal: nothing above the diagonal


def test_maps_equal_the_captured_weights(tiny_job):
    model, objective = setup(tiny_job)
    inputs, _ = eval_input(objective)
    event = attention_snapshot(model, inputs[0], objective.data.tokenizer, step=1)
    with engine.capture_attention(model.eval()) as cap:
        model(inputs[0])
    exact = torch.stack([cap.weights[i][0] for i in range(2)])
    assert (maps_of(event["stacks"]["self"]) - exact).abs().max() <= 0.5 / 255 + 1e-6


def test_long_inputs_keep_the_last_positions(tiny_config):
    model = build_model(tiny_config).eval()
    idx = torch.randint(tiny_config.vocab_size, (1, 16))
    tok = engine.TOKENIZERS["byte"]()
    event = attention_snapshot(model, idx, tok, max_tokens=10)
    assert event["window"] == [6, 16] and len(event["tokens"]) == 10
    w = maps_of(event["stacks"]["self"])
    assert w.shape == (2, 4, 10, 10)
    assert (w.sum(-1) - 1).abs().max() <= 2 / 255 * 10  # renormalised over the keys kept
    assert (w.triu(diagonal=1) == 0).all()


def test_byte_budget_narrows_the_window(tiny_config):
    model = build_model(tiny_config).eval()
    idx = torch.randint(tiny_config.vocab_size, (1, 16))
    event = attention_snapshot(model, idx, engine.TOKENIZERS["byte"](), max_bytes=2 * 4 * 8 * 8)
    assert event["window"] == [8, 16]
    assert len(json.dumps(event)) < 2000


def test_encoder_decoder_gives_three_stacks(tiny_job):
    model, objective = setup(tiny_job, family="encoder_decoder")
    event = attention_event(model, objective, torch.device("cpu"), torch.no_grad, 3)
    assert set(event["stacks"]) == {"encoder", "cross", "self"}
    (src, dec), _ = eval_input(objective)
    s, t = src.size(1), dec.size(1)
    assert event["source_window"] == [0, s] and len(event["source_tokens"]) == s
    assert event["tokens"][0] == "<s>"  # the decoder's start token, named
    shapes = {k: v["shape"][2:] for k, v in event["stacks"].items()}
    assert shapes == {"encoder": [s, s], "cross": [t, s], "self": [t, t]}
    assert event["stacks"]["cross"]["queries"] == "tokens" and event["stacks"]["cross"]["keys"] == "source_tokens"
    enc = maps_of(event["stacks"]["encoder"])
    assert (enc.triu(diagonal=1) > 0).any()  # bidirectional
    assert (maps_of(event["stacks"]["self"]).triu(diagonal=1) == 0).all()
    for stack in event["stacks"].values():
        w = maps_of(stack)
        assert (w.sum(-1) - 1).abs().max() <= 2 / 255 * w.size(-1)


def test_encoder_names_its_mask_token(tiny_job):
    model, objective = setup(tiny_job, family="encoder")
    event = attention_event(model, objective, torch.device("cpu"), torch.no_grad, 1)
    assert "[MASK]" in event["tokens"]
    assert (maps_of(event["stacks"]["self"]).triu(diagonal=1) > 0).any()


def test_the_mode_is_restored_and_nothing_stays_hooked(tiny_job):
    model, objective = setup(tiny_job)
    model.train()
    attention_event(model, objective, torch.device("cpu"), torch.no_grad, 1)
    assert model.training
    assert all(b.attn.capture is None for b in model.h)


def test_whitespace_is_visible():
    assert display_token(" a\n") == "␣a↵" and display_token("") == "∅" and display_token("\x00") == "<00>"


def test_text_decoder_reads_the_start_of_the_validation_split(tiny_job, text_file):
    job = {**tiny_job, "data": {"source": "text", "path": text_file, "tokenizer": "char"}}
    model, objective = setup(job)
    event = attention_event(model, objective, torch.device("cpu"), contextlib.nullcontext, 2)
    val = objective.data.val[:16].tolist()
    assert event["tokens"] == [display_token(objective.data.tokenizer.decode([i])) for i in val]
    assert event["window"] == [0, 16] and "␣" in event["tokens"]
