"""Inference jobs: prompts in, continuations (or embeddings) and measurements out, as plain dicts.

    out = run_inference(model, tokenizer, ["ROMEO:", "JULIET:"], max_new_tokens=32, top_k=20,
                        stop=["\\n\\n"], compare_cache=True)
    out["results"][0]["completion"], out["measurements"]["with_cache"]["tokens_per_s"]

The model may come from ``engine.train`` (``TrainResult.model``), a checkpoint
(``engine.checkpoint.load_model``), ``engine.quantize.quantize`` or
``engine.pretrained.load_minilm()``; what happens depends on its family:

- "decoder": each prompt is continued; "encoder_decoder": each prompt is the encoder's input and
  the output is written from the start token (the id after the tokenizer's vocabulary, as
  ``engine.model.generate`` does). Sampling is ``engine.model.sample`` (greedy at temperature
  0, then top-k, then top-p), each sequence from its own ``torch.Generator`` seeded with
  ``seed``, so a prompt gets the same tokens whatever else shares its batch, and the tokens that
  ``model.generate(prompt, ..., generator=torch.Generator().manual_seed(seed))`` gives it alone.
- "encoder" (BERT, MiniLM): no generation. Each prompt's tokens, the norm of its mean-pooled
  last hidden state (all-MiniLM-L6-v2 is trained as a mean-pooled sentence embedding) and the
  cosine similarity matrix between the prompts; ``measurements`` has one entry, "forward".

Batching: our forward has no padding mask, so prompts are grouped by token length and each
group runs as one batch (a group of one is the unbatched run); results come back in prompt
order, ``batches`` lists the groups. A batch runs until every sequence has stopped.

Token probabilities are the model's own (softmax of the logits at temperature 1, before top-k
and top-p), as OpenAI's logprobs are: ``prob`` of the chosen token and the ``top_alternatives``
likeliest tokens.

Measurements, per path (``with_cache``, and ``without_cache`` with ``compare_cache``):
``ttft_s`` (time to first token: prefill plus the first sample, mean over batches; after one
untimed warm-up on the first batch's prompts, so that neither path pays one-time costs),
``tokens_per_s`` (all sequences' new tokens over the whole time), ``decode_ms_per_token`` (mean
time of a step after the first; one step yields a token for every sequence of the batch),
``peak_memory_bytes``. Times include what the job does besides the model: sampling, the
probabilities, detokenising and the stop-string checks. On CUDA that is ``torch.cuda.max_memory_allocated``; on the CPU torch
keeps no allocator statistics, so it is the sum of what can be measured exactly: weight bytes
(``engine.quantize.weight_bytes``) + the weight copies ``keep_weights`` makes for decoding +
the KV cache at its largest + the largest logits tensor (a lower bound: attention and FFN
intermediates are left out). ``memory_measured`` says which one a result holds.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..models.decoder import sample
from ..nn.cache import _KEPT, keep_weights  # _KEPT: to count the weight copies decoding keeps
from .quantize import weight_bytes


def _show(prompt: str, width: int = 40) -> str:
    return repr(prompt if len(prompt) <= width else prompt[:width] + "…")


def encode_prompts(model, tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids per prompt; ValueError for an empty prompt or one longer than a context that
    cannot extrapolate (learned positions end at ``block_size``)."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    cfg = model.config
    out = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {i} is a {type(prompt).__name__}, not a string")
        ids = tokenizer.encode(prompt) if prompt else []
        if not ids:
            raise ValueError(f"prompt {i} ({prompt!r}) is empty; give at least one character to start from")
        inner = getattr(tokenizer, "tokenizer", None)  # a tokenizers.Tokenizer that truncates (WordPiece)
        overflow = getattr(inner.encode(prompt), "overflowing", None) if hasattr(inner, "encode") else None
        if overflow:
            raise ValueError(f"prompt {i} ({_show(prompt)}) is longer than the model's context of "
                             f"{cfg.block_size} tokens; shorten it")
        if not model.wpe.extrapolates and len(ids) > cfg.block_size:
            raise ValueError(f"prompt {i} ({_show(prompt)}) has {len(ids)} tokens, more than the model's context "
                             f"of {cfg.block_size} (block_size); position '{cfg.position}' has no vector beyond "
                             f"it, so shorten the prompt by {len(ids) - cfg.block_size} tokens")
        out.append(ids)
    return out


def group_by_length(ids: list[list[int]]) -> list[list[int]]:
    """Prompt indices grouped by token length (first appearance first): one batch per group."""
    groups: dict[int, list[int]] = {}
    for i, seq in enumerate(ids):
        groups.setdefault(len(seq), []).append(i)
    return list(groups.values())


def _check_sampling(max_new_tokens, temperature, top_k, top_p, top_alternatives) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer ≥ 1 (got {max_new_tokens!r})")
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0 (0 = greedy; got {temperature})")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be ≥ 1 or None (got {top_k})")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None (got {top_p})")
    if top_alternatives < 0:
        raise ValueError(f"top_alternatives must be ≥ 0 (got {top_alternatives})")


class _Meter:
    """Peak memory of one path: CUDA's allocator statistics, else the exact sizes of the tensors
    decoding holds (see the module docstring)."""

    def __init__(self, model, device: torch.device):
        self.cuda = device.type == "cuda"
        self.base = weight_bytes(model)
        self.kept = self.cache = self.logits = 0
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device

    def see(self, cache, logits: torch.Tensor, *extra: torch.Tensor) -> None:
        if self.cuda:
            return
        if cache is not None:
            n = sum(t.nbytes for t in cache.keys) + sum(t.nbytes for t in cache.values)
            self.cache = max(self.cache, n)
        self.logits = max(self.logits, logits.nbytes + sum(t.nbytes for t in extra))
        kept = _KEPT.get() or {}
        self.kept = max(self.kept, sum(t.nbytes for pair in kept.values() for t in pair if t is not None))

    def peak(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return self.base + self.kept + self.cache + self.logits

    def method(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated"
        return "weights + kept decoding weights + KV cache + largest output (exact tensor sizes; a lower bound)"


def _decode_batch(model, idx, *, steps, temperature, top_k, top_p, use_cache, generators, start_token, meter, on_step):
    """Sample up to ``steps`` tokens for the batch ``idx`` (B, T), the decoder's ``generate``
    loop with a hook: ``on_step(logits (B, vocab) float, next (B, 1)) -> True`` ends it early.
    Returns (seconds to the first token, seconds of each later step)."""
    t0 = time.perf_counter()
    times = []
    family = model.config.family
    cache, pos = (model.make_cache() if use_cache else None), 0
    if family == "encoder_decoder":
        memory = model.encode(idx)  # (B, S, C): the encoder runs once
        out = torch.full((idx.size(0), 1), start_token, dtype=torch.long, device=idx.device)
    else:
        memory, out = None, idx
        bs, crop, lean = model.config.block_size, not model.wpe.extrapolates, model._lean_decoding()
    for _ in range(steps):
        if family == "encoder_decoder":
            if cache is None:
                logits = model.decode(out, memory)
            else:
                logits = model.decode(out[:, pos:], memory, cache=cache, start_pos=pos)
                pos = out.size(1)
        elif cache is None:
            logits, _ = model(out[:, -bs:] if crop else out)
        else:  # as Decoder.generate: restart the cache when learned positions run out
            if crop and out.size(1) > bs:
                cache, pos = model.make_cache(), 0
                ctx = out[:, -bs:]
            else:
                ctx = out[:, pos:]
            if ctx.size(1) == 1 and lean:
                logits = model._decode_step(ctx, cache, pos)
            else:
                logits, _ = model(ctx, cache=cache, start_pos=pos)
            pos += ctx.size(1)
        meter.see(cache, logits, *(() if memory is None else (memory,)))
        last = logits[:, -1, :].float()  # (B, vocab)
        # one generator per sequence: its tokens do not depend on what else shares the batch
        nxt = torch.cat([sample(last[b : b + 1], temperature, top_k, top_p, g)
                         for b, g in enumerate(generators)])  # (B, 1); ``last`` stays unchanged
        out = torch.cat((out, nxt), dim=1)
        done = on_step(last, nxt)  # reads the tokens on the host: the step is over
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if done:
            break
    return times[0], times[1:]


def _warm_up(model, batch: list[list[int]], *, start_token: int) -> None:
    """Untimed forwards of the first batch's prompts, without and with a cache, then one cached
    decoding step: they make ``keep_weights``' copies, warm the allocator and let the CPU kernels
    pick their plans for these shapes, one-time costs that would otherwise land on whichever path
    runs first (a one-token warm-up left the prompt's shapes to the first path: its time to first
    token read up to 50 times the other's)."""
    idx = torch.tensor(batch, dtype=torch.long, device=next(model.parameters()).device)  # (B, T)
    if model.config.family == "encoder_decoder":
        memory, start = model.encode(idx), torch.full_like(idx[:, :1], start_token)
        model.decode(start, memory)
        model.decode(start, memory, cache=model.make_cache(), start_pos=0)
    else:
        model(idx)
        # and the cached path: the prompt's prefill, then one decoding step (the lean one where used)
        cache = model.make_cache()
        model(idx, cache=cache, start_pos=0)
        step = idx[:, -1:]
        if idx.size(1) >= model.config.block_size and not model.wpe.extrapolates:
            return  # a prompt that fills learned positions: decoding restarts the cache (as generate does)
        if model._lean_decoding():
            model._decode_step(step, cache, idx.size(1))
        else:
            model(step, cache=cache, start_pos=idx.size(1))


def _token(tokenizer, i: int) -> str:
    # sentinels and an encoder-decoder's start token lie beyond the tokenizer's vocabulary
    if i >= tokenizer.vocab_size:
        return f"<{i}>"
    text = tokenizer.decode([i])
    inner = getattr(tokenizer, "tokenizer", None)  # WordPiece's decode drops [CLS]/[SEP]: name them
    return text if text or not hasattr(inner, "id_to_token") else inner.id_to_token(i)


def _run_path(model, tokenizer, ids, groups, *, use_cache, seed, max_new_tokens, temperature, top_k, top_p,
              stop, stop_ids, top_alternatives, progress, on_token=None) -> tuple[list[dict], dict]:
    device = next(model.parameters()).device
    meter = _Meter(model, device)
    results: list[dict | None] = [None] * len(ids)
    ttfts, steps, n_new, t_start = [], [], 0, time.perf_counter()
    for group in groups:
        idx = torch.tensor([ids[i] for i in group], dtype=torch.long, device=device)  # (B, T)
        generators = [torch.Generator(device=device).manual_seed(seed) for _ in group]
        seqs = [{"new": [], "tokens": [], "stopped_by": "max_tokens", "cut": None} for _ in group]

        def on_step(last, nxt, seqs=seqs, group=group):
            probs = F.softmax(last, dim=-1)  # (B, vocab) the model's own distribution
            chosen = probs.gather(1, nxt).squeeze(1).tolist()
            k = min(top_alternatives, probs.size(-1))
            alt_p, alt_i = probs.topk(k, dim=-1) if k else (probs[:, :0], nxt[:, :0])
            alt_p, alt_i = alt_p.tolist(), alt_i.tolist()
            for b, (s, tok) in enumerate(zip(seqs, nxt.squeeze(1).tolist(), strict=True)):
                if s["cut"] is not None:
                    continue
                s["new"].append(tok)
                s["tokens"].append({"id": tok, "text": _token(tokenizer, tok), "prob": round(chosen[b], 6),
                                    "alternatives": [{"id": i, "text": _token(tokenizer, i), "prob": round(p, 6)}
                                                     for i, p in zip(alt_i[b], alt_p[b], strict=True)]})
                if on_token is not None:  # as it is sampled: a chat streams its answer token by token
                    on_token(group[b], s["tokens"][-1])
                text = tokenizer.decode([i for i in s["new"] if i < tokenizer.vocab_size])
                hits = [text.find(x) for x in stop if x and x in text]
                if hits:
                    s["stopped_by"], s["cut"] = "stop", min(hits)
                elif tok in stop_ids:  # a chat model's end of turn: shown as a token, not as text
                    s["stopped_by"], s["cut"] = "end_of_turn", len(text)
            progress()
            return all(s["cut"] is not None for s in seqs)

        first, later = _decode_batch(model, idx, steps=max_new_tokens, temperature=temperature, top_k=top_k,
                                     top_p=top_p, use_cache=use_cache, generators=generators,
                                     start_token=tokenizer.vocab_size, meter=meter, on_step=on_step)
        progress(max_new_tokens - 1 - len(later))  # steps an early stop skipped
        ttfts.append(first)
        steps += later
        n_new += len(group) * (1 + len(later))
        for i, s in zip(group, seqs, strict=True):
            text = tokenizer.decode([t for t in s["new"] if t < tokenizer.vocab_size])
            results[i] = {"prompt": None, "completion": text if s["cut"] is None else text[: s["cut"]],
                          "tokens": s["tokens"], "stopped_by": s["stopped_by"],
                          "n_prompt_tokens": len(ids[i]), "n_new_tokens": len(s["new"])}
    wall = time.perf_counter() - t_start
    measured = {
        "ttft_s": round(sum(ttfts) / len(ttfts), 6),
        "tokens_per_s": round(n_new / wall, 2),
        "decode_ms_per_token": round(1000 * sum(steps) / len(steps), 4) if steps else None,
        "peak_memory_bytes": meter.peak(),
        "memory_measured": meter.method(),
        "wall_s": round(wall, 4),
        "n_new_tokens": n_new,
    }
    return results, measured


@torch.no_grad()
def _embed(model, tokenizer, prompts, ids, groups) -> dict:
    device = next(model.parameters()).device
    meter = _Meter(model, device)
    pooled: list[torch.Tensor | None] = [None] * len(ids)
    t0 = time.perf_counter()
    for group in groups:
        idx = torch.tensor([ids[i] for i in group], dtype=torch.long, device=device)  # (B, T)
        h = model.hidden_states(idx)  # (B, T, C); no padding, so every token counts
        meter.see(None, h)
        for i, row in zip(group, h.float().mean(dim=1), strict=True):
            pooled[i] = row
    wall = time.perf_counter() - t0
    emb = torch.stack(pooled)  # (N, C)
    unit = F.normalize(emb, dim=-1)
    return {
        "family": model.config.family,
        "results": [{"prompt": p, "tokens": [{"id": t, "text": _token(tokenizer, t)} for t in seq],
                     "n_prompt_tokens": len(seq), "embedding_norm": round(float(e.norm()), 6)}
                    for p, seq, e in zip(prompts, ids, emb, strict=True)],
        "similarity": [[round(float(x), 6) for x in row] for row in unit @ unit.T],
        "embedding_dim": emb.size(1),
        "batches": groups,
        "measurements": {"forward": {
            "wall_s": round(wall, 6), "tokens_per_s": round(sum(map(len, ids)) / wall, 2),
            "peak_memory_bytes": meter.peak(), "memory_measured": meter.method()}},
    }


def run_inference(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.8,
                  top_k: int | None = None, top_p: float | None = None, stop: list[str] | tuple = (),
                  seed: int = 0, use_cache: bool = True, top_alternatives: int = 5, compare_cache: bool = False,
                  stop_ids: list[int] | tuple = (), on_progress=None, on_token=None, warm_up: bool = True) -> dict:
    """Run ``prompts`` through ``model`` (see the module docstring); a JSON-serialisable dict:

    ``{"family", "settings", "batches": [[prompt index, ...], ...], "results": [per prompt
    {"prompt", "completion", "tokens": [{"id", "text", "prob", "alternatives": [{"id", "text",
    "prob"}]}], "stopped_by": "stop" | "end_of_turn" | "max_tokens", "n_prompt_tokens", "n_new_tokens"}],
    "measurements": {"with_cache" | "without_cache": {"ttft_s", "tokens_per_s",
    "decode_ms_per_token", "peak_memory_bytes", "memory_measured", "wall_s", "n_new_tokens"}},
    "same_tokens": whether both paths sampled the same tokens (None without compare_cache)}``.
    A completion ends before the first ``stop`` string it contains, or once it samples one of
    ``stop_ids`` (a chat model's end-of-turn token: kept among its tokens). ``on_progress(done, total)``
    counts decoding steps. ``on_token(prompt index, token)`` receives each token's dict (as in
    ``results``) as soon as it is sampled, from the first path only (the cached one unless
    ``use_cache`` is off), and may raise to stop the run. ``warm_up=False`` skips the untimed warm-up
    (a chat's turn: its first token sooner, its time to first token then includes one-time costs).
    Encoders return embeddings instead (module docstring)."""
    ids = encode_prompts(model, tokenizer, prompts)
    groups = group_by_length(ids)
    was_training = model.training
    model.eval()
    try:
        if model.config.family == "encoder":
            return _embed(model, tokenizer, prompts, ids, groups)
        _check_sampling(max_new_tokens, temperature, top_k, top_p, top_alternatives)
        stop = [stop] if isinstance(stop, str) else list(stop)
        cfg = model.config
        if cfg.family == "encoder_decoder" and not model.wpe.extrapolates and max_new_tokens + 1 > cfg.block_size:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) + the start token exceeds the decoder's context "
                             f"of {cfg.block_size} (block_size) with position '{cfg.position}'")
        paths = [use_cache, not use_cache] if compare_cache else [use_cache]
        total, done = len(paths) * len(groups) * max_new_tokens, 0

        def progress(n: int = 1) -> None:
            nonlocal done
            done += n
            if on_progress and n:
                on_progress(done, total)

        runs = {}
        with torch.inference_mode(), keep_weights():  # as model.generate: no autograd, weights kept
            if warm_up:
                _warm_up(model, [ids[i] for i in groups[0]], start_token=tokenizer.vocab_size)
            for n, cached in enumerate(paths):
                runs[cached] = _run_path(model, tokenizer, ids, groups, use_cache=cached, seed=seed,
                                         max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                         top_p=top_p, stop=stop, stop_ids=set(stop_ids),
                                         top_alternatives=top_alternatives,
                                         progress=progress, on_token=on_token if n == 0 else None)
    finally:
        model.train(was_training)
    results = runs[use_cache][0]
    for r, p in zip(results, prompts, strict=True):
        r["prompt"] = p
    same = None
    if compare_cache:
        same = all(a["tokens"] and [t["id"] for t in a["tokens"]] == [t["id"] for t in b["tokens"]]
                   for a, b in zip(runs[True][0], runs[False][0], strict=True))
    return {
        "family": model.config.family,
        "settings": {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                     "stop": stop, "seed": seed, "use_cache": use_cache, "top_alternatives": top_alternatives},
        "batches": groups,
        "results": results,
        "measurements": {("with_cache" if cached else "without_cache"): m for cached, (_, m) in runs.items()},
        "same_tokens": same,
    }
