"""Training objectives: what each model family learns from a data source, and how it is scored.

``OBJECTIVES`` is keyed by ``ModelConfig.family``. Every entry is built from ``(data, model_cfg)``
(a ``DATA_SOURCES`` dataset) and offers the same interface to ``engine.train``:

- ``n_special(model_cfg, data)`` (static): token ids the objective adds above the data's
  vocabulary ([MASK], a decoder start token, sentinels), so ``vocab_size`` = data's + that;
- ``get_batch(split, batch_size, generator)`` and ``eval_batches(split, batch_size, eval_iters)``:
  tuples ``(*model_inputs, targets)``, so a step is ``model(*batch)``; targets -1 carry no loss;
- ``score(logits, targets) -> (hits, count)``: the held-out accuracy is Σ hits / Σ count, or
  None when ``scored`` is False;
- ``sample(model, device, autocast, seed, sample_tokens)``: the eval event's ``sample`` dict
  {prompt, completion, expected}, already decoded to text.

Objectives: next-token prediction (decoder); BERT's masked-language modelling (encoder:
accuracy is the share of masked tokens predicted right); sequence-to-sequence (encoder-decoder:
a synthetic task's prompt to its answer, scored by exact match; on text, T5's span corruption).

``TRAINING_OBJECTIVES`` is keyed by ``TrainConfig.objective``, then by family: "pretrain" is
``OBJECTIVES`` (the family's own), "sft" and "dpo" train decoders only, on the data
``data.load_data(cfg, objective)`` reads for them (``engine.chat``). ``build_objective(data,
model_cfg, train_cfg)`` builds one; every entry takes ``(data, cfg, train_cfg=None)``. Beyond
the interface above, each (through ``Objective``) offers what a loss other than the model's own
needs, which the training loop calls:

- ``wrap(forward, model, *, spec, init_from, resuming)`` -> the step's ``forward(*batch) ->
  (logits, loss)``, called once the weights are initialised or restored: the model itself, or
  for "sft" the model too (the response-only loss is in the targets), for "dpo" the
  preference loss against a frozen reference model (``engine.preference``);
- ``evaluate``: None (the loop's ``evaluate`` with ``score``), or ``(model, batches, autocast) ->
  (loss, accuracy, extra eval-event keys)``;
- ``step_metrics()`` -> extra "step" event keys, means since the previous call ({} by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..data.chat import cut_response
from .preference import DPO

if TYPE_CHECKING:
    from ..config.schema import ModelConfig


def exact_rows(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """Rows whose every scored target is the argmax. Under teacher forcing that equals greedy
    decoding's exact-match rate: if each answer token is right given the right prefix, greedy
    decoding reproduces that prefix token by token."""
    scored = y != -1
    hit = (logits.argmax(-1) == y) | ~scored  # (B, T): right, or not scored
    return int((hit.all(dim=1) & scored.any(dim=1)).sum()), int(scored.any(dim=1).sum())


class Objective:
    """What the objectives share: the model's own loss, evaluated by the loop, no extra metrics."""

    evaluate = None  # or a method (model, batches, autocast) -> (loss, accuracy, extra eval keys)

    def wrap(self, forward, model, **start):
        """The training step's ``forward(*batch) -> (logits, loss)``: the model's own here."""
        return forward

    def step_metrics(self) -> dict:
        """Extra keys of the next "step" event."""
        return {}


class NextToken(Objective):
    """The decoder's objective: predict each next token (on synthetic tasks, only the answer's)."""

    def __init__(self, data, cfg: ModelConfig, train_cfg=None):
        self.data, self.cfg = data, cfg
        self.scored = data.scored

    @staticmethod
    def n_special(cfg: ModelConfig, data) -> int:
        return 0

    def get_batch(self, split, batch_size, generator):
        return self.data.get_batch(split, batch_size, self.cfg.block_size, generator)

    def eval_batches(self, split, batch_size, eval_iters):
        return self.data.eval_batches(split, batch_size, self.cfg.block_size, eval_iters)

    def score(self, logits, y):
        return exact_rows(logits, y)

    def decode(self, ids: list[int]) -> str:
        return self.data.tokenizer.decode(ids)

    def sample(self, model, device, autocast, seed: int, sample_tokens: int) -> dict:
        sample = self.data.sample(self.cfg.block_size, sample_tokens)
        prompt = torch.tensor([sample["prompt"]], dtype=torch.long, device=device)
        generator = torch.Generator(device=device).manual_seed(seed)  # same draw at every eval
        with autocast():
            out = model.generate(prompt, sample["max_new_tokens"], temperature=sample["temperature"],
                                 generator=generator)
        return {
            "prompt": self.decode(sample["prompt"]),
            "completion": self.decode(out[0, prompt.size(1) :].tolist()),
            "expected": self.decode(sample["expected"]) if sample["expected"] is not None else None,
        }


# ---------------------------------------------------------------------------- masked LM


def mask_tokens(rows: torch.Tensor, *, probability: float, mask_id: int, vocab_size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking (Devlin et al. 2019, §3.1): each token is chosen with ``probability`` (at
    least one per row, so every row carries loss); a chosen token becomes ``mask_id`` 80% of the
    time, a random token of the data's ``vocab_size`` 10%, itself 10%. Returns (inputs, targets),
    targets -1 where not chosen."""
    chosen = torch.rand(rows.shape, generator=generator) < probability  # (B, T)
    none = ~chosen.any(dim=1)
    if none.any():  # rows the draw left empty get one chosen position
        pick = torch.randint(rows.size(1), (int(none.sum()),), generator=generator)
        chosen[none.nonzero()[:, 0], pick] = True
    how = torch.rand(rows.shape, generator=generator)
    inputs = rows.clone()
    inputs[chosen & (how < 0.8)] = mask_id
    swap = chosen & (how >= 0.8) & (how < 0.9)
    inputs[swap] = torch.randint(vocab_size, (int(swap.sum()),), generator=generator)
    targets = torch.where(chosen, rows, torch.full_like(rows, -1))
    return inputs, targets


class MaskedLM(Objective):
    """The encoder's objective: recover masked tokens from both sides. Rows are a synthetic
    task's whole examples (prompt and answer) or windows of text; accuracy is the share of
    masked tokens whose argmax is right."""

    scored = True

    def __init__(self, data, cfg: ModelConfig, train_cfg=None):
        self.data, self.cfg = data, cfg
        self.mask_id = data.vocab_size

    @staticmethod
    def n_special(cfg: ModelConfig, data) -> int:
        return 1  # [MASK]

    def _rows(self, split, batch_size, generator):
        if hasattr(self.data, "pairs"):
            prompt, answer = self.data.pairs(split, batch_size, generator)
            return torch.cat([prompt, answer], dim=1)[:, : self.cfg.block_size]
        return self.data.get_batch(split, batch_size, self.cfg.block_size, generator)[0]

    def _mask(self, rows, generator):
        return mask_tokens(rows, probability=self.cfg.mlm_probability, mask_id=self.mask_id,
                           vocab_size=self.data.vocab_size, generator=generator)

    def get_batch(self, split, batch_size, generator):
        return self._mask(self._rows(split, batch_size, generator), generator)

    def _eval_rows(self, split, batch_size, eval_iters) -> list[torch.Tensor]:
        if hasattr(self.data, "eval_pairs"):
            return [torch.cat(pa, dim=1)[:, : self.cfg.block_size]
                    for pa in self.data.eval_pairs(split, batch_size, eval_iters)]
        return [x for x, _ in self.data.eval_batches(split, batch_size, self.cfg.block_size, eval_iters)]

    def eval_batches(self, split, batch_size, eval_iters):
        # the same rows and the same masks at every evaluation
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        return [self._mask(r, generator) for r in self._eval_rows(split, batch_size, eval_iters)]

    def score(self, logits, y):
        scored = y != -1
        return int(((logits.argmax(-1) == y) & scored).sum()), int(scored.sum())

    def decode(self, ids: list[int]) -> str:
        tok = self.data.tokenizer
        return "".join("[MASK]" if i == self.mask_id else tok.decode([i]) for i in ids)

    def sample(self, model, device, autocast, seed: int, sample_tokens: int) -> dict:
        """A held-out row with its masks; the completion is the row with the model's fills."""
        generator = torch.Generator().manual_seed(seed)
        original = self._eval_rows("val", 1, 1)[0][:, :64]  # (1, T) the first held-out row
        inputs, targets = self._mask(original, generator)
        inputs = inputs.to(device)
        with autocast():
            logits, _ = model(inputs)
        fills = logits.argmax(-1).cpu()  # (1, T)
        masked = targets != -1
        completion = torch.where(masked, fills, original)
        return {"prompt": self.decode(inputs[0].tolist()), "completion": self.decode(completion[0].tolist()),
                "expected": self.decode(original[0].tolist())}


# ---------------------------------------------------------------------------- sequence to sequence


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """T5's fixed counts for a row of ``length`` tokens: (noise tokens, noise spans)."""
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(1, round(n_noise / mean_span_length))
    return n_noise, min(n_spans, n_noise, length - n_noise)


def _partition(n: int, k: int, generator: torch.Generator) -> list[int]:
    """``n`` split into ``k`` positive parts at random cut points."""
    cuts = sorted((torch.randperm(n - 1, generator=generator)[: k - 1] + 1).tolist())
    bounds = [0, *cuts, n]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def span_corrupt(row: list[int], *, noise_density: float, mean_span_length: float, sentinel: int,
                 generator: torch.Generator) -> tuple[list[int], list[int]]:
    """T5's span corruption (Raffel et al. 2020, §3.1.4; ``random_spans_noise_mask``): a fixed
    number of noise tokens, in a fixed number of spans of random lengths, alternating with
    kept spans (a kept one first). The input keeps the rest with span i replaced by the sentinel
    ``sentinel + i``; the target lists each sentinel followed by the tokens it hid (T5 also
    appends an end-of-sequence token to both; ours has none). Lengths depend only on
    ``len(row)``, so rows batch without padding."""
    n_noise, n_spans = span_counts(len(row), noise_density, mean_span_length)
    noise = _partition(n_noise, n_spans, generator)
    kept = _partition(len(row) - n_noise, n_spans, generator)
    inputs, targets, pos = [], [], 0
    for i, (k, n) in enumerate(zip(kept, noise)):
        inputs += row[pos : pos + k] + [sentinel + i]
        targets += [sentinel + i] + row[pos + k : pos + k + n]
        pos += k + n
    return inputs, targets


def span_restore(inputs: list[int], targets: list[int], sentinel: int, n_sentinel: int) -> list[int]:
    """The original row from a span-corrupted (inputs, targets) pair: each sentinel in the input
    replaced by the tokens after the same sentinel in the target."""
    spans, current = {}, None
    for t in targets:
        if sentinel <= t < sentinel + n_sentinel:
            current = t
            spans[current] = []
        elif current is not None:
            spans[current].append(t)
    out = []
    for t in inputs:
        out += spans.get(t, []) if sentinel <= t < sentinel + n_sentinel else [t]
    return out


class Seq2Seq(Objective):
    """The encoder-decoder's objective: the decoder writes the target given the encoder's
    input, teacher-forced behind a start token. Synthetic tasks map prompt -> answer and score
    exact match; text is span-corrupted windows of ``block_size`` tokens (T5)."""

    def __init__(self, data, cfg: ModelConfig, train_cfg=None):
        self.data, self.cfg = data, cfg
        self.synthetic = hasattr(data, "pairs")
        self.scored = self.synthetic
        self.start_id = data.vocab_size
        self.sentinel = data.vocab_size + 1
        self.n_sentinel = self.n_special(cfg, data) - 1

    @staticmethod
    def n_special(cfg: ModelConfig, data) -> int:
        if hasattr(data, "pairs"):
            return 1  # the decoder start token
        return 1 + span_counts(cfg.block_size, cfg.noise_density, cfg.mean_span_length)[1]

    def _pack(self, src: torch.Tensor, tgt: torch.Tensor):
        start = torch.full((tgt.size(0), 1), self.start_id, dtype=torch.long)
        return src, torch.cat([start, tgt[:, :-1]], dim=1), tgt.clone()  # (B, S), (B, T), (B, T)

    def _corrupt(self, rows: torch.Tensor, generator):
        pairs = [span_corrupt(r, noise_density=self.cfg.noise_density, mean_span_length=self.cfg.mean_span_length,
                              sentinel=self.sentinel, generator=generator) for r in rows.tolist()]
        return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])

    def get_batch(self, split, batch_size, generator):
        if self.synthetic:
            return self._pack(*self.data.pairs(split, batch_size, generator))
        rows = self.data.get_batch(split, batch_size, self.cfg.block_size, generator)[0]
        return self._pack(*self._corrupt(rows, generator))

    def eval_batches(self, split, batch_size, eval_iters):
        if self.synthetic:
            return [self._pack(p, a) for p, a in self.data.eval_pairs(split, batch_size, eval_iters)]
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        return [self._pack(*self._corrupt(x, generator))
                for x, _ in self.data.eval_batches(split, batch_size, self.cfg.block_size, eval_iters)]

    def score(self, logits, y):
        return exact_rows(logits, y)

    def decode(self, ids: list[int]) -> str:
        tok = self.data.tokenizer
        return "".join(f"<X{i - self.sentinel}>" if i >= self.sentinel else tok.decode([i]) for i in ids)

    def sample(self, model, device, autocast, seed: int, sample_tokens: int) -> dict:
        """The first held-out input, its target generated greedily by the decoder."""
        src, _, tgt = self.eval_batches("val", 1, 1)[0]
        with autocast():
            out = model.generate(src.to(device), tgt.size(1), temperature=0.0, start_token=self.start_id)
        return {"prompt": self.decode(src[0].tolist()), "completion": self.decode(out[0, 1:].tolist()),
                "expected": self.decode(tgt[0].tolist())}


OBJECTIVES = {"decoder": NextToken, "encoder": MaskedLM, "encoder_decoder": Seq2Seq}


# ---------------------------------------------------------------------------- fine-tuning


class ChatSFT(NextToken):
    """Supervised fine-tuning: next-token prediction on chat examples whose targets are -1
    except on the response (``chat.pad_rows``), so the loss is the response's alone (as in
    InstructGPT's SFT, Ouyang et al. 2022); exact-match accuracy on synthetic instructions."""

    def __init__(self, data, cfg: ModelConfig, train_cfg=None):
        super().__init__(data, cfg, train_cfg)
        self.scored = data.synthetic

    def sample(self, model, device, autocast, seed: int, sample_tokens: int) -> dict:
        """The first held-out chat prompt and the model's greedy response, up to its end marker."""
        sample = super().sample(model, device, autocast, seed, sample_tokens)
        return {**sample, "completion": cut_response(sample["completion"]),
                "expected": cut_response(sample["expected"])}


def build_objective(data, model_cfg: ModelConfig, train_cfg=None):
    """The ``TRAINING_OBJECTIVES`` entry of ``train_cfg.objective`` ("pretrain" without one) and
    ``model_cfg.family``, built on ``data`` (``data.load_data(data_cfg, objective)``)."""
    objective = train_cfg.objective if train_cfg is not None else "pretrain"
    return TRAINING_OBJECTIVES[objective][model_cfg.family](data, model_cfg, train_cfg)


TRAINING_OBJECTIVES = {"pretrain": OBJECTIVES, "sft": {"decoder": ChatSFT}, "dpo": {"decoder": DPO}}
