"""Sparse Mixture-of-Experts feed-forward layer: a drop-in for a dense FFN, (B, T, C) -> (B, T, C).

A router scores each token against ``n_expert`` FFNs; the token goes to its ``top_k`` best and
the output is their gate-weighted sum (Shazeer et al. 2017, "Outrageously Large Neural
Networks"). Parameters grow with ``n_expert`` while the compute per token grows only with
``top_k``. What is borrowed from where:

- top-1 routing without renormalisation, expert capacity and the load-balancing loss:
  Switch Transformer (Fedus, Zoph & Shazeer 2021, eqs. 4-6);
- the router z-loss: ST-MoE (Zoph et al. 2022, eq. 5);
- top-2 routing with the two gate weights renormalised to sum to 1: Mixtral (Jiang et al. 2024),
  whose ``MixtralSparseMoeBlock`` in ``transformers`` this layer reproduces exactly when the
  capacity limit is off, so checkpoints map expert by expert (w1/w3/w2 = gate/up/down_proj);
- an always-on shared expert added to the routed ones: DeepSeekMoE (Dai et al. 2024).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ffn import FFNS

if TYPE_CHECKING:
    from ..config.schema import ModelConfig


class MoE(nn.Module):
    """Top-k routed experts, each the dense FFN named by ``config.ffn``.

    After each forward, ``self.stats`` holds:

    - ``"tokens_per_expert"``: LongTensor (n_expert,) on the CPU, token-choices each expert
      processed (a token counts once per expert it went to), after the capacity limit;
    - ``"dropped"``: int, token-choices the capacity limit turned away;
    - ``"aux_loss"``: 0-dim float32 tensor with grad, the load-balancing loss
      ``n_expert * sum_e f_e * P_e``, where ``f_e`` is the share of all ``tokens * top_k``
      token-choices the router sent to expert e (before dropping) and ``P_e`` the mean router
      probability of e. Dividing by ``tokens * top_k`` makes perfectly balanced routing score
      exactly 1 for any top_k (Switch's eq. 4 is the top_k = 1 case; HF's
      ``load_balancing_loss_func`` divides by tokens only, so it reports top_k times this).
      Only ``P_e`` carries gradient: ``f_e`` is a count.
    - ``"z_loss"``: 0-dim float32 tensor with grad, ``mean(logsumexp(router_logits)^2)``; it
      keeps router logits small, which ST-MoE found stabilises training in low precision.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.n_expert < 1:
            raise ValueError(f"n_expert must be ≥ 1 for an MoE layer (got {config.n_expert})")
        if not 1 <= config.top_k <= config.n_expert:
            raise ValueError(f"top_k ({config.top_k}) must be between 1 and n_expert ({config.n_expert})")
        self.n_expert = config.n_expert
        self.top_k = config.top_k
        self.capacity_factor = config.capacity_factor
        self.renormalize = config.moe_renormalize
        # no bias: a bias would shift every token towards the same experts (Switch, Mixtral)
        self.router = nn.Linear(config.n_embd, config.n_expert, bias=False)
        self.experts = nn.ModuleList([FFNS[config.ffn](config) for _ in range(config.n_expert)])
        self.shared = FFNS[config.ffn](config) if config.shared_expert else None
        self.stats: dict = {}
        # engine.moe_maps.capture_routing sets ``record``; forward then also keeps which token went
        # where in ``routing`` (off by default: training pays nothing for it)
        self.record = False
        self.routing: dict | None = None

    def capacity(self, n_tokens: int) -> int:
        """Most token-choices one expert takes: ``ceil(capacity_factor * tokens * top_k / n_expert)``
        (Switch eq. 3, times top_k); capacity_factor 0 means no limit (dropless)."""
        if self.capacity_factor <= 0:
            return n_tokens * self.top_k
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_expert)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        n, k, e = b * t, self.top_k, self.n_expert
        x_flat = x.reshape(n, c)  # (N, C)

        # route in float32 even under autocast: small logit differences decide the top-k, and a
        # bf16 softmax flips them (Switch's "selective precision")
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x_flat.float(), self.router.weight.float())  # (N, E)
        probs = F.softmax(logits, dim=-1)  # (N, E)
        gate, expert_idx = torch.topk(probs, k, dim=-1)  # (N, k), (N, k)
        if self.renormalize:
            gate = gate / gate.sum(dim=-1, keepdim=True)

        # Capacity, first come first served in token order (token 0's choices, then token 1's, ...).
        # A stable sort by expert groups the N*k token-choices by expert, keeping token order
        # inside each group, so each expert's kept choices are the head of its group.
        choice_expert = expert_idx.reshape(-1)  # (N*k,) choice j belongs to token j // k
        order = torch.argsort(choice_expert, stable=True)  # (N*k,)
        routed = torch.bincount(choice_expert, minlength=e)  # (E,) before dropping
        cap = self.capacity(n)
        routed_list = routed.tolist()  # one host sync: the expert loop needs the group sizes
        kept_list = [min(r, cap) for r in routed_list]

        out = torch.zeros_like(x_flat)  # (N, C)
        gate_flat = gate.reshape(-1)  # (N*k,)
        start = 0
        for i, expert in enumerate(self.experts):
            choices = order[start : start + kept_list[i]]  # (n_i,) kept token-choices of expert i
            start += routed_list[i]
            if choices.numel() == 0:
                continue
            tokens = choices // k  # (n_i,)
            y = expert(x_flat.index_select(0, tokens))  # (n_i, C): only the routed tokens
            out.index_add_(0, tokens, (y * gate_flat[choices].unsqueeze(-1)).to(out.dtype))
        if self.shared is not None:
            out = out + self.shared(x_flat)

        f = routed.float() / (n * k)  # (E,) share of token-choices per expert, sums to 1
        p = probs.mean(dim=0)  # (E,) mean router probability, sums to 1
        self.stats = {
            "tokens_per_expert": torch.tensor(kept_list, dtype=torch.long),
            "dropped": n * k - sum(kept_list),
            "aux_loss": e * torch.sum(f * p),
            "z_loss": torch.logsumexp(logits, dim=-1).square().mean(),
        }
        if self.record:
            self.routing = self.assignment(expert_idx, gate, order, routed, cap, b, t)
        return out.reshape(b, t, c)

    @staticmethod
    @torch.no_grad()
    def assignment(expert_idx: torch.Tensor, gate: torch.Tensor, order: torch.Tensor, routed: torch.Tensor,
                   cap: int, b: int, t: int) -> dict:
        """Each token's choices as forward made them, on the CPU: ``experts`` (B, T, k) ids in top-k
        order, ``weights`` (B, T, k) float32 gate weights and ``kept`` (B, T, k) bool, False where the
        capacity limit turned the choice away. A choice is kept when its rank inside its expert's
        group of the stable sort (token order) is below the capacity, as the expert loop takes them."""
        n_choices = order.numel()
        place = torch.empty_like(order)
        place[order] = torch.arange(n_choices, device=order.device)  # (N*k,) index in the sorted order
        group_start = torch.cumsum(routed, 0) - routed  # (E,) where each expert's group begins
        rank = place - group_start[expert_idx.reshape(-1)]  # (N*k,) 0 = the expert's first choice
        return {
            "experts": expert_idx.reshape(b, t, -1).cpu(),
            "weights": gate.detach().float().reshape(b, t, -1).cpu(),
            "kept": (rank < cap).reshape(b, t, -1).cpu(),
        }

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        ffn = FFNS[config.ffn].num_params(config)
        return config.n_embd * config.n_expert + (config.n_expert + int(config.shared_expert)) * ffn

    @staticmethod
    def active_params(config: ModelConfig) -> int:
        """Parameters one token passes through: the router, top_k experts and the shared one."""
        ffn = FFNS[config.ffn].num_params(config)
        return config.n_embd * config.n_expert + (config.top_k + int(config.shared_expert)) * ffn
