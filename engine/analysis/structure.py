"""What a config's attention pattern and position scheme look like, as small matrices to draw:
the mask each query sees, and the position signal (RoPE's rotation of each frequency pair by
position, ALiBi's distance penalty per head, the sinusoids' similarity between positions, T5's
bucket of each offset). Computed from the registries' own functions, without building a model,
so any size (a 405B preset included) answers at once.

    structure(config, t=32) -> {"t", "mask": {...}, "position": {...}}
"""

from __future__ import annotations

import torch

from ..nn.attention import ATTENTIONS
from ..nn.position import ROPE_SCALINGS, alibi_bias, alibi_slopes, relative_position_bucket, sinusoids


def structure(config, t: int = 32) -> dict:
    """``t`` × ``t`` pictures of ``config``'s attention pattern and position scheme (plain lists,
    JSON-ready); ``t`` is capped at ``config.block_size`` and 128."""
    t = max(1, min(t, config.block_size, 128))
    return {"t": t, "mask": _mask(config, t), "position": _position(config, t)}


def _mask(config, t: int) -> dict:
    causal = config.family != "encoder"
    kind = ATTENTIONS[config.attention]
    heads, note = kind(config, causal=causal).structure_mask(t)  # the distinct (T, T) pictures
    keys = [float(h.sum(-1).float().mean()) for h in heads]
    return {"attention": config.attention, "label": kind.label(config), "color": kind.color, "causal": causal,
            "heads": [h.int().tolist() for h in heads], "mean_keys": keys, "note": note}


def _position(config, t: int) -> dict:
    kind = config.position
    pos = torch.arange(t)
    if kind == "rope":
        dim = config.head_size
        inv_freq, _ = ROPE_SCALINGS[config.rope_scaling](config, dim)
        phase = pos[:, None].float() * inv_freq[None, :].float()  # (T, dim/2): angle of each pair
        return {"kind": kind, "title": "RoPE: cos(position × frequency) per dimension pair",
                "matrix": torch.cos(phase).tolist(), "x": "dimension pair (fast → slow)", "y": "position"}
    if kind == "alibi":
        slopes = alibi_slopes(config.n_head)
        bias = alibi_bias(slopes, pos, pos, symmetric=config.family == "encoder")  # (nh, T, T)
        if config.family != "encoder":
            bias = bias.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("nan"))
        return {"kind": kind, "title": f"ALiBi: score bias of head 1 (slope {slopes[0]:.3g}) by query and key",
                "matrix": _finite(bias[0]), "slopes": slopes.tolist(), "x": "key position", "y": "query position"}
    if kind == "sinusoidal":
        pe = sinusoids(0, t, config.n_embd)  # (T, C)
        pe = pe / pe.norm(dim=-1, keepdim=True)
        return {"kind": kind, "title": "Sinusoidal: cosine similarity of the position vectors",
                "matrix": (pe @ pe.T).tolist(), "x": "position", "y": "position"}
    if kind == "t5_relative":
        rel = pos[None, :] - pos[:, None]  # key − query
        buckets = relative_position_bucket(rel, bidirectional=config.family == "encoder",
                                           num_buckets=config.relative_attention_num_buckets,
                                           max_distance=config.relative_attention_max_distance)
        return {"kind": kind, "title": "T5: relative-position bucket of each query/key offset",
                "matrix": buckets.tolist(), "x": "key position", "y": "query position"}
    note = {"learned": "learned positions: one trained vector per position (random until trained)",
            "none": "no position signal: order comes only from the causal mask"}.get(kind, "")
    return {"kind": kind, "title": note, "matrix": None}


def _finite(x: torch.Tensor) -> list:
    return [[None if v != v else v for v in row] for row in x.tolist()]  # NaN (masked) -> None for JSON
