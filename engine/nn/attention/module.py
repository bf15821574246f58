"""The attention modules: ``CausalSelfAttention`` (q, k, v projections, GQA, qk-norm, RoPE, the KV
cache, then the configured pattern) and ``CrossAttention`` (keys and values from the encoder)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..cache import Linear, joint_linear
from ..norm import RMSNorm
from ..position import apply_rotary
from .masked import FullAttention
from .registry import ATTENTIONS

if TYPE_CHECKING:
    from ...config.schema import ModelConfig
    from ..cache import KVCache


class CausalSelfAttention(nn.Module):
    """Self-attention; causal unless ``causal=False`` (an encoder's, where the pattern is made
    symmetric). ``CrossAttention`` reuses it with keys and values from another sequence."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0, *, causal: bool = True):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head or config.n_head
        self.head_dim = config.head_size
        width, kv_dim = config.attention_width, self.n_kv_head * self.head_dim
        # separate projections rather than nanoGPT's fused c_attn, so names match HF checkpoints;
        # the heads are n_head × head_dim wide, the residual stream's width unless head_dim is set
        # q, k and v carry biases with every linear layer's (``bias``) or alone (``qkv_bias``, Qwen2)
        qkv_bias = config.qkv_biased
        self.q_proj = Linear(config.n_embd, width, bias=qkv_bias)
        self.k_proj = Linear(config.n_embd, kv_dim, bias=qkv_bias)
        self.v_proj = Linear(config.n_embd, kv_dim, bias=qkv_bias)
        self.o_proj = Linear(width, config.n_embd, bias=config.bias)
        if config.qk_norm:  # per head, before RoPE (OLMo 2, Gemma 3, Qwen 3): bounds the logits
            self.q_norm = RMSNorm(self.head_dim, bias=False, eps=config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, bias=False, eps=config.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.layer_idx = layer_idx
        # a kind may differ by layer (local_global: a sliding window, or every n-th layer all keys)
        self.pattern = ATTENTIONS[config.attention].for_layer(config, layer_idx, causal=causal)
        self.capture = None  # set by ``capture_attention``: called with the weights when not None

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias=None,
        cache: KVCache | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        b, t, _ = x.size()
        hs, nh, n_kv = self.head_dim, self.n_head, self.n_kv_head
        if torch.is_grad_enabled():
            # three matmuls when training: as fast as one at these sizes, and one would make autograd
            # keep a concatenated copy of the weights
            q = self.q_proj(x).view(b, t, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
            k = self.k_proj(x).view(b, t, n_kv, hs).transpose(1, 2)  # (B, n_kv, T, hs)
            v = self.v_proj(x).view(b, t, n_kv, hs).transpose(1, 2)  # (B, n_kv, T, hs)
            qk = None
        else:
            # one matmul at inference, where a decoding step's time goes mostly on launching kernels
            qkv = self.project_qkv(x).view(b, t, nh + 2 * n_kv, hs).transpose(1, 2)  # (B, nh + 2 n_kv, T, hs)
            qk, v = qkv.split((nh + n_kv, n_kv), dim=1)
            q, k = qk.split((nh, n_kv), dim=1)
        if self.q_norm is not None:
            q, k, qk = self.q_norm(q), self.k_norm(k), None
        if rope is not None:
            if qk is not None:  # q and k side by side: rotated in one pass
                q, k = apply_rotary(qk, *rope).split((nh, n_kv), dim=1)
            else:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, n_kv, Tk, hs): cached keys come first
        # keys and values stay grouped (n_kv heads): the pattern maps query head h to h // n_rep
        y, weights = self.pattern.attend(
            q, k, v, q_start=start_pos, bias=bias,
            dropout_p=self.dropout if self.training else 0.0, need_weights=self.capture is not None,
        )  # (B, nh, T, hs)
        if weights is not None:
            self.capture(self.layer_idx, weights)
        y = y.transpose(1, 2).contiguous().view(b, t, nh * hs)  # re-assemble heads side by side
        y = self.o_proj(y)
        return self.resid_dropout(y) if self.training else y  # a module call saved per decoding step

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """q, k and v side by side (..., (nh + 2 n_kv) hs) from one matmul, for inference; the
        three stay separate parameters, under HF's names."""
        return joint_linear(x, self, "qkv", (self.q_proj, self.k_proj, self.v_proj))

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        d, width = config.n_embd, config.attention_width
        kv = (config.n_kv_head or config.n_head) * config.head_size
        weights = 2 * d * width + 2 * d * kv
        # q_proj's, k_proj's and v_proj's (with ``bias`` or ``qkv_bias``); o_proj's (with ``bias``)
        biases = (width + 2 * kv if config.qkv_biased else 0) + (d if config.bias else 0)
        qk_norm = 2 * config.head_size if config.qk_norm else 0
        return weights + biases + qk_norm


class CrossAttention(CausalSelfAttention):
    """Encoder-decoder attention (Vaswani et al. 2017, §3.2.3): queries from the decoder, keys and
    values from the encoder's output (``memory``); every query sees every encoder position, with
    no position signal (as in T5). Same projections, and parameter count, as self-attention;
    linear attention stays linear, every softmax pattern becomes full."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__(config, layer_idx, causal=False)
        if self.pattern.has_scores:
            self.pattern = FullAttention(config, causal=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        (b, t, _), s = x.size(), memory.size(1)
        hs = self.head_dim
        q = self.q_proj(x).view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(memory).view(b, s, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, S, hs)
        v = self.v_proj(memory).view(b, s, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, S, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        y, weights = self.pattern.attend(q, k, v, q_start=s - t, bias=None,
                                         dropout_p=self.dropout if self.training else 0.0,
                                         need_weights=self.capture is not None)
        if self.capture is not None:
            self.capture(self.layer_idx, weights)  # (B, nh, T, S): decoder queries over encoder keys
        y = y.transpose(1, 2).contiguous().view(b, t, self.n_head * hs)  # (B, T, nh·hs)
        return self.resid_dropout(self.o_proj(y))
