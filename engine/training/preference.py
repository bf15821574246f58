"""Direct preference optimisation (DPO; Rafailov et al. 2023, eq. 7): learn from pairs of
responses to one prompt, one preferred ("chosen", y_w) over the other ("rejected", y_l),
without a reward model, by raising the policy's log-probability of y_w relative to a frozen
reference model more than that of y_l:

    loss = −log σ(β [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])

where log π(y|x) sums the response tokens' log-probabilities (the prompt and padding carry
target -1) and β (``TrainConfig.dpo_beta``) sets how far from the reference the policy may
move. β (log π − log π_ref) is each response's implicit reward; the reward margin is the
chosen's minus the rejected's, and the reward accuracy the share of pairs where it is positive.

``DPO`` is the "dpo" entry of ``objectives.TRAINING_OBJECTIVES``: its batches come from
``chat.PreferenceData`` as (x, y) of 2B rows, the chosen rows then the rejected ones, so policy
and reference each read a batch in one forward. ``wrap`` freezes a copy of the model as the
reference when training starts (the seeded initialisation, or the checkpoint ``init_from``
names: in practice an SFT model) and returns the step's forward with the DPO loss.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.chat import cut_response
from ..models.decoder import add_moe_loss

if TYPE_CHECKING:
    from ..config.schema import ModelConfig

METRICS = ("chosen_logp", "rejected_logp", "reward_margin", "reward_accuracy")


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ log p(target) over each row's positions whose target is not -1: (N, T, V), (N, T) -> (N,)."""
    scored = targets != -1
    logp = torch.log_softmax(logits.float(), dim=-1)  # (N, T, V)
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (N, T)
    return (picked * scored).sum(dim=1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean DPO loss over pairs from sequence log-probabilities (each (B,)), and the batch's
    means of ``METRICS`` (detached 0-d tensors)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)  # (B,)
    rejected_reward = beta * (policy_rejected - ref_rejected)  # (B,)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    stats = {
        "chosen_logp": policy_chosen.detach().mean(),
        "rejected_logp": policy_rejected.detach().mean(),
        "reward_margin": margin.detach().mean(),
        "reward_accuracy": (margin.detach() > 0).float().mean(),
    }
    return loss, stats


def frozen(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that takes no gradients, in eval mode (no dropout)."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


class DPO:
    """The "dpo" objective (decoder only): a preference loss against a frozen reference."""

    scored = True  # accuracy is the held-out reward accuracy

    def __init__(self, data, cfg: ModelConfig, train_cfg=None):
        self.data, self.cfg = data, cfg
        self.beta = train_cfg.dpo_beta if train_cfg is not None else 0.1
        self.reference: nn.Module | None = None
        self._pending: list[dict[str, torch.Tensor]] = []  # one per training micro-batch since step_metrics

    @staticmethod
    def n_special(cfg: ModelConfig, data) -> int:
        return 0

    def get_batch(self, split, batch_size, generator):
        return self.data.get_batch(split, batch_size, self.cfg.block_size, generator)

    def eval_batches(self, split, batch_size, eval_iters):
        return self.data.eval_batches(split, batch_size, self.cfg.block_size, eval_iters)

    def decode(self, ids: list[int]) -> str:
        return self.data.tokenizer.decode(ids)

    # ------------------------------------------------------------------------ the loss

    def loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor):
        """The DPO loss and metrics of a batch: the policy's ``logits`` (2B, T, V) on rows ``x``."""
        policy = sequence_logprobs(logits, y)  # (2B,)
        with torch.no_grad():
            ref = sequence_logprobs(self.reference(x)[0], y)  # (2B,)
        b = x.size(0) // 2
        return dpo_loss(policy[:b], policy[b:], ref[:b], ref[b:], self.beta)

    def wrap(self, forward, model: nn.Module, *, spec=None, init_from: str | None = None, resuming: bool = False):
        """Freeze the reference and return the training step's ``forward(x, y) -> (logits, loss)``.
        Starting, the reference is ``model`` as it is now (seeded, or ``init_from``'s weights);
        resuming, ``model`` holds later weights, so the start is rebuilt: the seeded
        initialisation of ``spec``, then the weights of ``init_from`` or else
        ``spec.train.init_from`` when either names a checkpoint."""
        self.reference = self.starting_model(model, spec, init_from) if resuming else frozen(model)

        def dpo_forward(x, y):
            logits, _ = forward(x)
            loss, stats = self.loss(logits, y, x)
            self._pending.append(stats)
            return logits, add_moe_loss(model, loss, model.h)  # MoE's balancing terms still train

        return dpo_forward

    @staticmethod
    def starting_model(model: nn.Module, spec, init_from: str | None) -> nn.Module:
        from ..models.families import build_model
        from .checkpoint import load_weights  # checkpoint imports config, which imports this module

        with torch.random.fork_rng(devices=[]):  # leave the restored RNG streams alone
            torch.manual_seed(spec.train.seed)  # as train() does before building the model
            start = build_model(spec.model)
        init_from = init_from or getattr(spec.train, "init_from", None)
        if init_from:
            load_weights(start, init_from)
        return frozen(start.to(next(model.parameters()).device))

    def step_metrics(self) -> dict:
        """``METRICS``' means over the micro-batches since the last call."""
        if not self._pending:
            return {}
        out = {k: _finite(torch.stack([s[k] for s in self._pending]).mean()) for k in METRICS}
        self._pending.clear()
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches, autocast) -> tuple[float, float, dict]:
        """(mean DPO loss, reward accuracy, {reward_margin, reward_accuracy, chosen_logp,
        rejected_logp}) over ``batches``, each pair weighted equally."""
        model.eval()
        total, sums, n = 0.0, dict.fromkeys(METRICS, 0.0), 0
        for x, y in batches:
            with autocast():
                logits, _ = model(x)
            loss, stats = self.loss(logits, y, x)
            b = x.size(0) // 2
            total += loss.item() * b
            for k in METRICS:
                sums[k] += stats[k].item() * b
            n += b
        model.train()
        means = {k: v / n for k, v in sums.items()}
        return total / n, means["reward_accuracy"], {k: _finite(v) for k, v in means.items()}

    def sample(self, model, device, autocast, seed: int, sample_tokens: int) -> dict:
        """The first held-out prompt, the model's greedy response and the chosen one."""
        sample = self.data.sample(self.cfg.block_size, sample_tokens)
        prompt = torch.tensor([sample["prompt"]], dtype=torch.long, device=device)
        with autocast():
            out = model.generate(prompt, sample["max_new_tokens"], temperature=0.0)
        return {"prompt": self.decode(sample["prompt"]),
                "completion": cut_response(self.decode(out[0, prompt.size(1) :].tolist())),
                "expected": cut_response(self.decode(sample["expected"]))}


def _finite(x) -> float | None:
    x = float(x)
    return x if x == x and abs(x) != float("inf") else None
