"""Attention maps of a model on one fixed held-out input, as a compact JSON-ready event.

    event = attention_event(model, objective, device, autocast, step)  # in train's _evaluate
    event = attention_snapshot(model, idx, tokenizer, step=step)       # any model, any input

The event (kind "attention"):

    step           the training step
    tokens         display strings of the (decoder's) input tokens inside the window
    window         [start, end): the positions of the input that ``tokens`` and the maps cover
    source_tokens, source_window   encoder-decoder only: the encoder's input, likewise
    stacks         {"self": {...}} (decoder or encoder), or for an encoder-decoder
                   {"encoder": ..., "cross": ..., "self": ...}; each
                   {"n_layer", "n_head", "shape": [n_layer, n_head, Tq, Tk],
                    "queries": "tokens" | "source_tokens", "keys": "tokens" | "source_tokens",
                    "encoding": "uint8-base64", "maps": <base64 of n_layer·n_head·Tq·Tk bytes>}

Encoding: the weights of batch row 0, cropped to the window (the last positions when the input
is longer than ``max_tokens``), each row renormalised to sum to 1 over the keys it keeps (a row
is a query's distribution over the keys shown), then ``round(255·w)`` as uint8, laid out
row-major over (layer, head, query, key) and base64-encoded. Dequantise with ``byte / 255``:
a row then sums to 1 within T·0.5/255. A byte budget (``max_bytes``) narrows the window further
for many layers × heads, so one event stays small enough for the database row and one
channel-layer message (≈ 200 KB of base64 at the default).

Long inputs (longer than ``max_tokens``, e.g. a 2,048-token context): the forward runs its fused
kernels and each layer's weights are recomputed from its queries and keys in chunks of rows
(``engine.attention_zoom``), so no T×T map is ever whole in memory. The window above stays (from
an eighth of the byte budget: 64 tokens for up to 4 maps, 48 for 2 layers × 4 heads), and two
entries are added:

    stacks[name]["overview"]   every position, pooled: {"shape": [n_layer, n_head, Nq, Nk],
                               "block": [bq, bk], "length": [Tq, Tk], "encoding": "uint8-base64",
                               "maps": ...}; cell (I, J) is the mean over query block I's queries of
                               the mass they give key block J (blocks of bq, bk positions, the last
                               shorter; N ≤ 128 per side, less where the rest of the byte
                               budget would not hold 128² per head), encoded as the maps are
    input                      what rebuilds the input for detail on zoom
                               (``attention_zoom.attention_region``; the web app's
                               /attention/region endpoint): {"encoding": "uint16-base64" |
                               "int32-base64", "tokens": <the ids>, "source_tokens": <encoder-decoder
                               only>, "specials": {"<id>": name}}; ~2 bytes a token

Cost of a long input: each layer's T² scores per head are computed once, in row chunks of
≤ 64 MB, while the forward runs; 2 layers × 4 heads at T = 2,048 take well under a second on a
CPU, 12 × 12 heads at T = 8,192 (~10¹⁰ scores) want a GPU.

Nothing here runs unless called: the maps come from one extra forward under
``capture_attention`` (or, for long inputs, ``attention_zoom.record_scores``) per call.
"""

from __future__ import annotations

import base64
import contextlib
import weakref

import torch
import torch.nn as nn

from .attention_zoom import OVERVIEW_CELLS, attention_modules, blocks, record_scores
from .capture import capture_attention

MAX_TOKENS = 64
MAX_BYTES = 150_000  # raw bytes of all maps; base64 makes them 4/3 of that

# whitespace and controls drawn as visible symbols (as the tokenization lab shows them)
VISIBLE = {" ": "␣", "\n": "↵", "\t": "→", "\r": "␍"}


def display_token(text: str) -> str:
    """A token's text with whitespace made visible; an empty decode shows as ∅."""
    if text == "":
        return "∅"
    return "".join(VISIBLE.get(c, c if c.isprintable() else f"<{ord(c):02X}>") for c in text)


def _label(tokenizer, i: int) -> str:
    if getattr(tokenizer, "kind", None) == "byte":  # one byte of a cut character: show its value
        return display_token(chr(i)) if i < 128 else f"<{i:02X}>"
    try:
        return display_token(tokenizer.decode([i]))
    except (IndexError, KeyError, ValueError):
        return f"<{i}>"


def label_tokens(ids: list[int], tokenizer, specials: dict[int, str] | None = None) -> list[str]:
    """Display strings, one per id; ``specials`` names ids above the tokenizer's vocabulary."""
    specials = specials or {}
    return [specials[i] if i in specials else _label(tokenizer, i) for i in ids]


def encode_maps(weights: torch.Tensor) -> str:
    """(..., Tq, Tk) non-negative weights -> base64 of uint8 ``round(255·w / row sum)``, row-major."""
    w = weights.float()
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    q = (w * 255).round().clamp(0, 255).to(torch.uint8).cpu().contiguous()
    return base64.b64encode(q.numpy().tobytes()).decode("ascii")


def decode_maps(maps: str, shape: list[int]) -> torch.Tensor:
    """The inverse of ``encode_maps`` up to quantisation: float32 weights of ``shape``."""
    raw = bytearray(base64.b64decode(maps))
    return torch.frombuffer(raw, dtype=torch.uint8).float().div(255).reshape(shape)


def _stacks_of(model: nn.Module) -> list[tuple[str, str, str]]:
    """(stack, query tokens, key tokens) of each attention the model has."""
    if hasattr(model, "enc_h"):
        return [("encoder", "source_tokens", "source_tokens"), ("cross", "tokens", "source_tokens"),
                ("self", "tokens", "tokens")]
    return [("self", "tokens", "tokens")]


def _fit_window(n_maps: dict[str, int], lengths: dict[str, int], max_tokens: int, max_bytes: int) -> int:
    """The largest window ≤ max_tokens whose maps fit in ``max_bytes``."""
    t = max_tokens
    while t > 1:
        size = sum(n * min(lengths[q], t) * min(lengths[k], t) for (q, k), n in n_maps.items())
        if size <= max_bytes:
            break
        t -= 1
    return t


@torch.no_grad()
def attention_snapshot(
    model: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], tokenizer, *, step: int = 0,
    max_tokens: int = MAX_TOKENS, max_bytes: int = MAX_BYTES, specials: dict[int, str] | None = None,
    autocast=contextlib.nullcontext,
) -> dict:
    """The attention event of ``model`` on ``inputs``: (1, T) ids, or for an encoder-decoder
    ``(src (1, S), dec_idx (1, T))``; ``tokenizer`` labels the ids, ``specials`` the ids above its
    vocabulary. Runs one forward in eval mode and restores the model's mode."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    device = next(model.parameters()).device
    inputs = tuple(t[:1].to(device) for t in inputs)
    stacks = _stacks_of(model)
    seqs = {"tokens": inputs[-1][0].tolist()}
    if len(inputs) == 2:
        seqs["source_tokens"] = inputs[0][0].tolist()

    lengths = {key: len(ids) for key, ids in seqs.items()}
    if max(lengths.values()) > max_tokens:
        return _long_snapshot(model, inputs, tokenizer, seqs, stacks, step=step, max_tokens=max_tokens,
                              max_bytes=max_bytes, specials=specials, autocast=autocast)

    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as ctx:
            caps = {name: ctx.enter_context(capture_attention(model, stack=name)) for name, _, _ in stacks}
            with autocast():
                model(*inputs)
    finally:
        model.train(was_training)

    n_maps: dict[tuple[str, str], int] = {}
    for name, q, k in stacks:
        w = caps[name].weights
        n_maps[(q, k)] = n_maps.get((q, k), 0) + len(w) * w[0].size(1)
    t = _fit_window(n_maps, lengths, max_tokens, max_bytes)
    windows = {key: [max(0, n - t), n] for key, n in lengths.items()}

    event: dict = {"kind": "attention", "step": step}
    _window_labels(event, seqs, windows, tokenizer, specials)
    event["stacks"] = {}
    for name, q, k in stacks:
        weights = caps[name].weights
        (qs, qe), (ks, ke) = windows[q], windows[k]
        maps = torch.stack([weights[i][0, :, qs:qe, ks:ke] for i in sorted(weights)])  # (L, H, Tq, Tk)
        event["stacks"][name] = {
            "n_layer": maps.size(0), "n_head": maps.size(1), "shape": list(maps.shape),
            "queries": q, "keys": k, "encoding": "uint8-base64", "maps": encode_maps(maps),
        }
    return event


def _window_labels(event: dict, seqs: dict, windows: dict, tokenizer, specials) -> None:
    for key, ids in seqs.items():
        start, end = windows[key]
        prefix = "" if key == "tokens" else "source_"
        event[key] = label_tokens(ids[start:end], tokenizer, specials)
        event[prefix + "window"] = [start, end]


def encode_ids(ids: list[int], wide: bool = False) -> str:
    """Base64 of token ids, little-endian: uint16, or int32 when ``wide`` (an id ≥ 65,536)."""
    t = torch.tensor(ids, dtype=torch.int64)
    t = t.to(torch.int32) if wide else (t - (t >= 1 << 15).long() * (1 << 16)).to(torch.int16)  # uint16 bits
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def decode_ids(encoding: str, text: str) -> list[int]:
    """The inverse of ``encode_ids``."""
    raw = bytearray(base64.b64decode(text))
    if encoding == "uint16-base64":
        return [int(i) & 0xFFFF for i in torch.frombuffer(raw, dtype=torch.int16).tolist()] if raw else []
    if encoding == "int32-base64":
        return torch.frombuffer(raw, dtype=torch.int32).tolist() if raw else []
    raise ValueError(f"unknown id encoding {encoding!r}; choose from ['int32-base64', 'uint16-base64']")


def event_inputs(event: dict) -> tuple[tuple[torch.Tensor, ...], dict[int, str]]:
    """The input a long event's maps were made on (``(ids,)`` or ``(src, dec)``, each (1, T)) and
    the names of its special ids, from its "input" entry; ValueError when it has none."""
    info = event.get("input")
    if not info:
        raise ValueError("this attention event keeps no input (it was short enough to send whole)")
    seqs = [decode_ids(info["encoding"], info[k]) for k in ("source_tokens", "tokens") if k in info]
    return tuple(torch.tensor([s], dtype=torch.long) for s in seqs), {int(i): n for i, n in info.get("specials", {}).items()}


def _fit_cells(n_maps: dict[tuple[str, str], int], lengths: dict[str, int], budget: int) -> int:
    """The largest overview side ≤ OVERVIEW_CELLS whose maps fit in ``budget`` bytes."""
    n = OVERVIEW_CELLS
    while n > 1:
        size = sum(m * blocks(lengths[q], n)[1] * blocks(lengths[k], n)[1] for (q, k), m in n_maps.items())
        if size <= budget:
            break
        n -= 1
    return n


@torch.no_grad()
def _long_snapshot(model, inputs, tokenizer, seqs, stacks, *, step, max_tokens, max_bytes, specials, autocast) -> dict:
    """``attention_snapshot`` for inputs longer than ``max_tokens``: the window from an eighth of
    the byte budget, an overview of every position from the rest (see the module docstring)."""
    n_maps: dict[tuple[str, str], int] = {}
    for name, q, k in stacks:
        mods = attention_modules(model, name)
        n_maps[(q, k)] = n_maps.get((q, k), 0) + len(mods) * mods[0].n_head
    lengths = {key: len(ids) for key, ids in seqs.items()}
    t = _fit_window(n_maps, lengths, max_tokens, max_bytes // 8)  # the overview matters more here
    windows = {key: [max(0, n - t), n] for key, n in lengths.items()}
    used = sum(m * min(lengths[q], t) * min(lengths[k], t) for (q, k), m in n_maps.items())
    cells = _fit_cells(n_maps, lengths, max_bytes - used)

    window_maps: dict[str, dict[int, torch.Tensor]] = {name: {} for name, _, _ in stacks}
    overviews: dict[str, dict[int, torch.Tensor]] = {name: {} for name, _, _ in stacks}
    sizes = {name: (blocks(lengths[q], cells)[0], blocks(lengths[k], cells)[0]) for name, q, k in stacks}

    def on_scores(name, q, k):
        (qs, qe), (ks, ke) = windows[q], windows[k]
        bq, bk = sizes[name]

        def keep(layer, scores):  # in the forward: the layer's window rows and its pooled map
            window_maps[name][layer] = scores.rows(qs, qe)[..., ks:ke]  # (H, tq, tk)
            overviews[name][layer] = scores.pooled(0, lengths[q], 0, lengths[k], bq, bk)  # (H, Nq, Nk)
        return keep

    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as ctx:
            for name, q, k in stacks:
                ctx.enter_context(record_scores(model, on_scores(name, q, k), stack=name))
            with autocast():
                model(*inputs)
    finally:
        model.train(was_training)

    event: dict = {"kind": "attention", "step": step}
    _window_labels(event, seqs, windows, tokenizer, specials)
    event["stacks"] = {}
    for name, q, k in stacks:
        maps = torch.stack([window_maps[name][i] for i in sorted(window_maps[name])])  # (L, H, tq, tk)
        pooled = torch.stack([overviews[name][i] for i in sorted(overviews[name])])  # (L, H, Nq, Nk)
        event["stacks"][name] = {
            "n_layer": maps.size(0), "n_head": maps.size(1), "shape": list(maps.shape),
            "queries": q, "keys": k, "encoding": "uint8-base64", "maps": encode_maps(maps),
            "overview": {"shape": list(pooled.shape), "block": list(sizes[name]), "length": [lengths[q], lengths[k]],
                         "encoding": "uint8-base64", "maps": encode_maps(pooled)},
        }
    wide = any(max(ids, default=0) >= 1 << 16 for ids in seqs.values())
    info: dict = {"encoding": "int32-base64" if wide else "uint16-base64"}
    info.update({key: encode_ids(ids, wide) for key, ids in seqs.items()})
    info["specials"] = {str(i): s for i, s in (specials or {}).items()}
    event["input"] = info
    return event


# the held-out input of each objective, drawn once: the same row at every evaluation
_INPUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def eval_input(objective) -> tuple[tuple[torch.Tensor, ...], dict[int, str]]:
    """A fixed held-out input for ``objective`` (an ``OBJECTIVES`` entry) and the names of its
    special ids: a synthetic task's first validation example (prompt and answer, so copy or
    induction heads show); for text, the first ``block_size`` tokens of the validation split
    (a decoder) or the first evaluation window (masked for an encoder, span-corrupted for an
    encoder-decoder)."""
    if objective in _INPUTS:
        return _INPUTS[objective]
    data = objective.data
    if not data.scored and not hasattr(objective, "mask_id") and not hasattr(objective, "start_id"):
        inputs = (data.val[: objective.cfg.block_size][None].long(),)  # a decoder's text: the split's start
    else:
        batch = objective.eval_batches("val", 1, 1)[0]
        inputs = tuple(t[:1] for t in batch[:-1])  # drop the targets
    vocab = data.vocab_size
    specials = {}
    if hasattr(objective, "mask_id"):
        specials[objective.mask_id] = "[MASK]"
    if hasattr(objective, "start_id"):
        specials[objective.start_id] = "<s>"
        specials.update({objective.sentinel + i: f"<X{i}>" for i in range(objective.n_sentinel)})
    specials = {i: s for i, s in specials.items() if i >= vocab}
    _INPUTS[objective] = (inputs, specials)
    return inputs, specials


def attention_event(model: nn.Module, objective, device, autocast, step: int, *,
                    max_tokens: int = MAX_TOKENS, max_bytes: int = MAX_BYTES) -> dict | None:
    """The "attention" event for ``engine.train``'s evaluation at ``step``, or None when the
    model has no attention to show."""
    if not isinstance(getattr(model, "h", None), nn.ModuleList):
        return None
    inputs, specials = eval_input(objective)
    return attention_snapshot(model, tuple(t.to(device) for t in inputs), objective.data.tokenizer,
                              step=step, max_tokens=max_tokens, max_bytes=max_bytes, specials=specials,
                              autocast=autocast)
