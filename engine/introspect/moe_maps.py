"""Which expert each token of one fixed held-out input went to, as a compact JSON-ready event.

    event = routing_event(model, objective, device, autocast, step)  # in train's evaluation
    event = routing_snapshot(model, idx, tokenizer, step=step)       # any MoE model, any input

The event (kind "routing"), for a model with experts (``routing_event`` returns None without):

    step           the training step
    tokens         display strings of the (decoder's) input tokens inside the window
    window         [start, end): the positions of the input that ``tokens`` covers
    source_tokens, source_window   encoder-decoder only: the encoder's input, likewise
    top_k, n_expert
    layers         one per MoE layer, in the "moe" event's numbering (encoder first):
                   {"layer", "input": "tokens" | "source_tokens",
                    "experts": [[expert id per choice, best first] per token],
                    "weights": [[gate weight per choice, 3 decimals] per token],
                    "dropped": [[true where the capacity limit turned the choice away] per token]}

The assignment is the layer's own (``MoE.assignment``, recorded during one extra forward of
batch row 0 in eval mode), so the numerics are those of every other forward. Capacity is
counted over the whole input, first come first served in token order, so drops fall on late
tokens; the window keeps the last ``max_tokens`` positions (as the attention event does), and
the dropped choices of the positions before it are not shown.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from ..nn.moe import MoE
from .attention_maps import eval_input, label_tokens

MAX_TOKENS = 64


def moe_layers(model: nn.Module) -> list[tuple[int, str, MoE]]:
    """(layer number, input name, layer) of each MoE layer, numbered as ``moe_stats`` numbers them:
    every block, the encoder's first."""
    enc = list(getattr(model, "enc_h", []))
    blocks = [(b, "source_tokens") for b in enc] + [(b, "tokens") for b in getattr(model, "h", [])]
    return [(i, name, b.mlp) for i, (b, name) in enumerate(blocks) if isinstance(getattr(b, "mlp", None), MoE)]


class RoutingCapture:
    """Filled when ``capture_routing`` exits: ``layers`` maps a layer number to its last forward's
    ``MoE.assignment`` ({"experts", "weights", "kept"}, each (B, T, k))."""

    def __init__(self):
        self.layers: dict[int, dict] = {}


@contextlib.contextmanager
def capture_routing(model: nn.Module):
    """Record the routing of every MoE layer during the forward passes inside the block; the last
    forward's is kept. The layers stop recording on exit."""
    layers = moe_layers(model)
    capture = RoutingCapture()
    for _, _, moe in layers:
        moe.record, moe.routing = True, None
    try:
        yield capture
    finally:
        for i, _, moe in layers:
            if moe.routing is not None:
                capture.layers[i] = moe.routing
            moe.record, moe.routing = False, None


@torch.no_grad()
def routing_snapshot(
    model: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], tokenizer, *, step: int = 0,
    max_tokens: int = MAX_TOKENS, specials: dict[int, str] | None = None, autocast=contextlib.nullcontext,
) -> dict:
    """The routing event of ``model`` on ``inputs``: (1, T) ids, or for an encoder-decoder
    ``(src (1, S), dec_idx (1, T))``; ``tokenizer`` labels the ids, ``specials`` the ids above its
    vocabulary. Runs one forward in eval mode and restores the model's mode."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    device = next(model.parameters()).device
    inputs = tuple(t[:1].to(device) for t in inputs)
    seqs = {"tokens": inputs[-1][0].tolist()}
    if len(inputs) == 2:
        seqs["source_tokens"] = inputs[0][0].tolist()

    was_training = model.training
    model.eval()
    try:
        with capture_routing(model) as capture, autocast():
            model(*inputs)
    finally:
        model.train(was_training)

    windows = {key: [max(0, len(ids) - max_tokens), len(ids)] for key, ids in seqs.items()}
    event: dict = {"kind": "routing", "step": step}
    for key, ids in seqs.items():
        start, end = windows[key]
        event[key] = label_tokens(ids[start:end], tokenizer, specials)
        event[("" if key == "tokens" else "source_") + "window"] = [start, end]
    layers = moe_layers(model)
    event["top_k"] = layers[0][2].top_k if layers else 0
    event["n_expert"] = layers[0][2].n_expert if layers else 0
    event["layers"] = []
    for i, name, _ in layers:
        if i not in capture.layers:
            continue
        routing = capture.layers[i]
        start, end = windows[name]
        event["layers"].append({
            "layer": i, "input": name,
            "experts": routing["experts"][0, start:end].tolist(),
            "weights": [[round(w, 3) for w in row] for row in routing["weights"][0, start:end].tolist()],
            "dropped": (~routing["kept"][0, start:end]).tolist(),
        })
    return event


def routing_event(model: nn.Module, objective, device, autocast, step: int, *,
                  max_tokens: int = MAX_TOKENS) -> dict | None:
    """The "routing" event for ``engine.train``'s evaluation at ``step`` on the attention event's
    held-out input, or None when the model has no experts (nothing runs then)."""
    if not moe_layers(model):
        return None
    inputs, specials = eval_input(objective)
    return routing_snapshot(model, tuple(t.to(device) for t in inputs), objective.data.tokenizer, step=step,
                            max_tokens=max_tokens, specials=specials, autocast=autocast)
