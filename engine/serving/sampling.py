"""What a request asks for (``SamplingParams``), what each step gives back (``StepOutput``), and the
choice of each row's next token with its log-probabilities.

Each row is sampled on its own, with its own generator, through ``engine.models.decoder.sample``
(the function ``generate`` uses): a seeded request draws the same tokens whatever shares its
batch, and the same ones ``generate`` draws with that seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.decoder import sample


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy (argmax)
    top_p: float | None = None
    top_k: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # reported, then the sequence finishes ("stop")
    seed: int | None = None  # a torch.Generator of the request's own: same seed, same sample, whatever the batch
    logprobs: int = 0  # top alternatives reported per token; the chosen token's logprob always is

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")


@dataclass
class StepOutput:
    request_id: str
    token: int
    logprob: float  # log-softmax of the raw logits (before temperature) at the chosen token
    top: list[tuple[int, float]]  # the ``logprobs`` likeliest (id, logprob), best first
    finished: bool
    finish_reason: str | None  # "stop" (a stop token), "length" (max_tokens), None while running


def choose(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """(token, its logprob, the top alternatives) per row of ``logits`` (R, vocab), row i drawn
    with ``params[i]`` and ``generators[i]``. The logprobs are the model's own distribution,
    before temperature and truncation, as OpenAI's API reports them."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)  # (R, vocab)
    greedy = [i for i, p in enumerate(params) if p.temperature == 0]
    tokens = torch.empty(len(params), dtype=torch.long, device=logits.device)
    if greedy:
        tokens[greedy] = logits[greedy].argmax(dim=-1)
    for i, p in enumerate(params):
        if p.temperature != 0:
            tokens[i] = sample(logits[i : i + 1], p.temperature, p.top_k, p.top_p, generators[i])[0, 0]
    chosen = logp.gather(1, tokens[:, None])[:, 0]
    top_lp, top_ids = torch.topk(logp, min(max(p.logprobs for p in params), logp.size(-1)), dim=-1)  # k may be 0
    tokens_l, chosen_l, top_lp_l, top_ids_l = tokens.tolist(), chosen.tolist(), top_lp.tolist(), top_ids.tolist()
    return [(tokens_l[i], chosen_l[i], list(zip(top_ids_l[i][: p.logprobs], top_lp_l[i][: p.logprobs])))
            for i, p in enumerate(params)]
