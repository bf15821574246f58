"""Linear attention (Katharopoulos et al. 2020): softmax replaced by a feature map, no T×T matrix."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .base import AttentionKind
from .kernels import repeat_kv

if TYPE_CHECKING:
    from ...config.schema import ModelConfig


def elu_feature(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1  # Katharopoulos et al. 2020, eq. 7: positive, smooth


FEATURE_MAPS = {"elu": elu_feature, "relu": F.relu}


class LinearAttention(AttentionKind):
    """Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): softmax(q·k)
    replaced by φ(q)·φ(k), so y_i = φ(q_i)·S_i / (φ(q_i)·z_i) with running sums
    S_i = Σ_{j≤i} φ(k_j) v_jᵀ and z_i = Σ_{j≤i} φ(k_j): cost linear in T, no T×T matrix.
    φ is ``FEATURE_MAPS[feature_map]``. No scores, so no ALiBi, soft-cap or attention dropout.

    The sums are taken chunk-wise (as in Yang et al. 2024, "Gated Linear Attention"): inside
    a chunk of ``chunk`` positions a small causal (C, C) product, across chunks a cumulative sum
    of per-chunk states, which keeps memory at T·(hs²/C + C) per head rather than T·hs² for a
    per-position cumulative sum."""

    help = "linear attention (cost linear in context, no softmax)"
    color = "slate"
    fields = ("feature_map",)
    has_scores = False
    decode_formula = "(4 × d × hs + 4 × d) (a recurrent state)"
    executed_formula = "chunked linear attention, as run"
    eps = 1e-6  # keeps relu features' all-zero rows finite (they give 0)
    chunk = 64

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        super().__init__(config, causal=causal)
        self.phi = FEATURE_MAPS[config.feature_map]

    def attend(self, q, k, v, *, q_start: int, bias, dropout_p: float, need_weights: bool):
        n_rep = q.size(-3) // k.size(-3)
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        fq, fk, vf = self.phi(q.float()), self.phi(k.float()), v.float()
        if need_weights:
            w = self.weights(fq, fk)
            return (w @ vf).type_as(v), w.type_as(q)
        if not self.causal:  # every query sees every key: one global state, y_i = φ(q_i)·S / φ(q_i)·z
            s = torch.einsum("bhtd,bhte->bhde", fk, vf)  # (B, nh, hs, hs)
            z = fk.sum(dim=2)  # (B, nh, hs)
            y = (fq @ s) / ((fq @ z[..., None]) + self.eps)  # (B, nh, Tq, hs)
            return y.type_as(v), None
        return self.running(fq, fk, vf).type_as(v), None

    def running(self, fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """y for (B, nh, Tq, hs) features of the last Tq of Tk positions, chunk-wise."""
        b, h, tq, d = fq.shape
        e, past = v.size(-1), fk.size(-2) - tq
        # keys before the first query (a KV cache's) enter every query as one initial state
        s0 = torch.einsum("bhtd,bhte->bhde", fk[:, :, :past], v[:, :, :past])  # (B, nh, hs, hs)
        z0 = fk[:, :, :past].sum(dim=2)  # (B, nh, hs)
        fk, v = fk[:, :, past:], v[:, :, past:]
        c = min(self.chunk, tq)
        n, pad = -(-tq // c), -tq % c  # chunks, and zero features to fill the last one
        fq, fk, v = (F.pad(x, (0, 0, 0, pad)).view(b, h, n, c, x.size(-1)) for x in (fq, fk, v))  # (B, nh, N, C, ·)
        chunk_s = torch.einsum("bhncd,bhnce->bhnde", fk, v)  # (B, nh, N, hs, hs) each chunk's Σ φ(k) vᵀ
        chunk_z = fk.sum(dim=3)  # (B, nh, N, hs)
        # state before each chunk: the initial one plus the exclusive cumulative sum of earlier chunks
        s = s0[:, :, None] + torch.cumsum(chunk_s, dim=2) - chunk_s  # (B, nh, N, hs, hs)
        z = z0[:, :, None] + torch.cumsum(chunk_z, dim=2) - chunk_z  # (B, nh, N, hs)
        local = (fq @ fk.transpose(-2, -1)).tril()  # (B, nh, N, C, C) causal inside the chunk
        num = torch.einsum("bhncd,bhnde->bhnce", fq, s) + local @ v  # (B, nh, N, C, hs)
        den = torch.einsum("bhncd,bhnd->bhnc", fq, z) + local.sum(-1)  # (B, nh, N, C)
        y = num / (den[..., None] + self.eps)
        return y.reshape(b, h, n * c, e)[:, :, :tq]

    def weights(self, fq: torch.Tensor, fk: torch.Tensor) -> torch.Tensor:
        """The implied attention matrix, quadratic: (causal) φ(q)·φ(k) over its row sum (B, nh, Tq, Tk)."""
        tq, tk = fq.size(-2), fk.size(-2)
        a = fq @ fk.transpose(-2, -1)  # (B, nh, Tq, Tk)
        if self.causal:
            causal = torch.ones(tq, tk, dtype=torch.bool, device=fq.device).tril(diagonal=tk - tq)
            a = a.masked_fill(~causal, 0.0)
        return a / (a.sum(-1, keepdim=True) + self.eps)

    def weights_at(self, q, k, *, q_start, k_start, bias=None, heads=None):
        a = self.phi(q.float()) @ self.phi(k.float()).transpose(-2, -1)  # (H, Tq, Tk)
        if self.causal:  # key position ≤ query position, as ``weights``
            q_pos = torch.arange(q_start, q_start + q.size(-2), device=q.device)
            k_pos = torch.arange(k_start, k_start + k.size(-2), device=q.device)
            a = a.masked_fill(~(k_pos[None, :] <= q_pos[:, None]), 0.0)
        return a / (a.sum(-1, keepdim=True) + self.eps)

    def structure_mask(self, t):
        allowed = torch.ones(t, t, dtype=torch.bool)  # every key before (or, in an encoder, around) a query counts
        return [allowed.tril() if self.causal else allowed], \
            "linear attention has no score matrix: each query sums over these keys through its running state"

    @classmethod
    def flops_per_token(cls, config, t, *, causal=True):
        """Per token and head: φ(k) vᵀ into the chunk state and φ(q)·S, hs² multiply-adds each,
        and the in-chunk products φ(q)·φ(k) and weights·v, about C/2 keys of hs each (counted the
        same way for the bidirectional, one-state form)."""
        w, hs = config.attention_width, config.head_size
        c = min(cls.chunk, t)
        return 4 * w * hs + 4 * w * (c + 1) / 2

    @classmethod
    def decode_flops_per_token(cls, config, t):
        # decodes recurrently: the state update φ(k)vᵀ and φ(q)·S, hs² each, and z
        w = config.attention_width
        return 4 * w * config.head_size + 4 * w

    @classmethod
    def executed_flops_per_token(cls, config, t, *, causal=True):
        d, hs = config.attention_width, config.head_size
        if not causal:
            return 4 * d * hs + 2 * d  # one global state; φ(q)·z adds 2·n_head·hs
        c = min(cls.chunk, t)
        return (4 * d * hs + 4 * d * c + 2 * d) * (-(-t // c) * c) / t  # the chunked products, last chunk padded

    @classmethod
    def saved_activations(cls, config, t):
        # no T×T matrix: per-chunk states (hs² per C positions) and (C, C) products; feature maps
        hs, c = config.head_size, min(cls.chunk, t)
        return config.n_head * -(-t // c) * c * (3 * hs**2 // c + 2 * c), 6 * t * config.attention_width
