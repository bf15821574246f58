"""``ServingEngine``: many requests decoded together, with iteration-level (continuous) batching
over a paged KV cache.

Each ``step()`` is one forward of the model over a flat batch of tokens from every running
request (Yu et al. 2022, Orca: schedule per iteration, not per batch): one token for each
request whose prompt has been read, and chunks of the prompts still being read, at most
``prefill_chunk`` prompt tokens a step (Agrawal et al. 2024, Sarathi: long prompts no longer stall
the decodes in flight). A request joins the batch at the first step after it fits, and leaves it
as soon as it finishes, its blocks back on the free list.

The forward is ``Decoder._decode_step``'s arithmetic on the flat batch: the projections and FFNs
run over all N tokens at once as (1, N, C); only attention is per request, reading its keys
through its block table. The decode rows attend together (padded to the longest, masked); each
prompt chunk attends causally to its request's cached positions and itself.

When a request needs a block and none is free, the most recently admitted request is preempted:
its blocks are freed and it goes back to the front of the queue, to be read again from its prompt
and the tokens it has produced so far (vLLM's recompute preemption)."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models.decoder import Decoder, embed
from ..nn.attention import ATTENTIONS, sdpa_attention
from ..nn.cache import keep_weights
from ..nn.position import apply_rotary
from .paged import PagedKVCache
from .sampling import SamplingParams, StepOutput, choose

# when a waiting request may join: every step, or only once the whole batch has finished (the
# "static" batching baseline, where each batch waits for its longest request)
ADMISSIONS = {"continuous": lambda running: True, "static": lambda running: not running}


def unsupported(model) -> list[str]:
    """What in ``model`` the engine's forward does not compute (empty: it serves it). The engine
    runs ``Decoder._lean_decoding``'s case: pre-norm, plain causal softmax attention, no experts,
    soft-caps, QK-norm or score bias."""
    if not isinstance(model, Decoder):
        return [f"family '{model.config.family}' (only a decoder generates token by token)"]
    c, why = model.config, []
    if c.norm_placement != "pre":
        why.append(f"norm_placement '{c.norm_placement}' (pre-norm only)")
    if not ATTENTIONS[c.attention].plain_causal:
        why.append(f"attention '{c.attention}' (plain causal attention only)")
    if c.n_expert:
        why.append(f"a mixture of experts (n_expert {c.n_expert})")
    if c.attn_softcap or c.final_softcap:
        why.append(f"soft-caps (attn_softcap {c.attn_softcap}, final_softcap {c.final_softcap})")
    if c.qk_norm:
        why.append("qk_norm")
    if model.wpe.score_bias() is not None:
        why.append(f"position '{c.position}' (a bias on the attention scores)")
    return why


@dataclass(eq=False)
class _Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    out: list[int] = field(default_factory=list)
    read: int = 0  # positions of prompt + out whose keys are cached

    @property
    def total(self) -> int:
        return len(self.prompt) + len(self.out)

    def tokens(self, start: int, n: int) -> list[int]:
        p = len(self.prompt)
        if start >= p:
            return self.out[start - p : start - p + n]
        return (self.prompt + self.out)[start : start + n]


class ServingEngine:
    """Serves ``model`` (a ``Decoder``) to many requests at once: ``add`` requests, call ``step``
    until ``has_work`` is False, each step returning the new tokens.

    ``num_blocks`` blocks of ``block_size`` positions make the KV pool: by default as many as
    ``kv_bytes`` hold, else enough for ``max_batch`` sequences of the full context. At most
    ``max_batch`` requests run at once and ``prefill_chunk`` prompt tokens are read per step.
    ``policy`` "continuous" admits waiting requests at every step, "static" only when the batch
    is empty. The model is put in eval mode; its weights must not change while the engine serves.

    One thread drives ``step``; others may ``add``, ``abort`` and read ``stats`` meanwhile (a lock
    makes each call whole: an abort during a step takes effect when the step ends)."""

    def __init__(self, model, *, block_size: int = 16, num_blocks: int | None = None, kv_bytes: int | None = None,
                 max_batch: int = 32, prefill_chunk: int = 256, policy: str = "continuous"):
        why = unsupported(model)
        if why:
            raise ValueError(f"ServingEngine cannot serve this model: {'; '.join(why)}")
        if policy not in ADMISSIONS:
            raise ValueError(f"unknown policy {policy!r}; choose from {list(ADMISSIONS)}")
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError(f"max_batch ({max_batch}) and prefill_chunk ({prefill_chunk}) must be at least 1")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.model = model.eval()
        c = model.config
        per_block = PagedKVCache.bytes_per_token_of(model) * block_size
        if num_blocks is None:
            if kv_bytes is not None:
                num_blocks = kv_bytes // per_block
                if num_blocks < 1:
                    raise ValueError(f"kv_bytes ({kv_bytes:,}) holds no block of {block_size} positions "
                                     f"({per_block:,} bytes)")
            else:
                num_blocks = max_batch * -(-c.block_size // block_size)
        weight = model.wte.weight
        self.device = weight.device
        self.cache = PagedKVCache(n_layer=c.n_layer, n_kv_head=c.n_kv_head or c.n_head, head_dim=c.head_size,
                                  block_size=block_size, num_blocks=num_blocks, dtype=weight.dtype, device=self.device)
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self.policy, self._may_admit = policy, ADMISSIONS[policy]
        self.waiting: collections.deque[_Request] = collections.deque()
        self.running: list[_Request] = []  # in admission order: the last is the first preempted
        self._kept: dict = {}  # the concatenated projection weights, kept across steps (``keep_weights``)
        self._tokens_generated = self._steps = self._preemptions = 0
        self._lock = threading.Lock()
        with torch.inference_mode():
            # what an additive position scheme (learned, sinusoidal) adds at each position, as a table
            # indexed per token; None for the schemes that add nothing (RoPE, none)
            added = model.wpe(torch.zeros(1, c.block_size, c.n_embd, dtype=weight.dtype, device=self.device), 0)[0]
            self._added_positions = added if bool(added.any()) else None

    # ------------------------------------------------------------------ requests

    def add(self, request_id: str, prompt: list[int], params: SamplingParams) -> None:
        """Queue a request; it joins the batch at the first step with room for it."""
        with self._lock:
            self._add(request_id, prompt, params)

    def _add(self, request_id: str, prompt: list[int], params: SamplingParams) -> None:
        if any(r.id == request_id for r in self._requests()):
            raise ValueError(f"request id {request_id!r} is already in use")
        if not prompt:
            raise ValueError("the prompt is empty; give at least one token")
        context, vocab = self.model.config.block_size, self.model.config.vocab_size
        if len(prompt) + params.max_tokens > context:
            raise ValueError(f"the prompt ({len(prompt)} tokens) and max_tokens ({params.max_tokens}) exceed the "
                             f"model's context of {context} tokens")
        if not all(0 <= t < vocab for t in prompt):
            raise ValueError(f"prompt token ids must lie in [0, {vocab})")
        # the last token produced is never read back, so the cache holds one fewer
        need = self.cache.blocks_for(len(prompt) + params.max_tokens - 1)
        if need > self.cache.num_blocks:
            raise ValueError(f"the request needs {need} KV blocks ({len(prompt)} prompt tokens + {params.max_tokens} "
                             f"max_tokens, {self.cache.block_size} per block) but the pool has "
                             f"{self.cache.num_blocks}")
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        self.waiting.append(_Request(request_id, list(prompt), params, generator))

    def abort(self, request_id: str) -> None:
        """Drop a request, waiting or running, and free its blocks now; an unknown id is ignored."""
        with self._lock:
            self.waiting = collections.deque(r for r in self.waiting if r.id != request_id)
            self.running = [r for r in self.running if r.id != request_id]
            self.cache.release(request_id)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self.waiting or self.running)

    def set_policy(self, policy: str) -> None:
        """Admit by ``policy`` from the next step on (a serving process switches it for a load
        test's comparison); the sequences running now go on as they are."""
        if policy not in ADMISSIONS:
            raise ValueError(f"unknown policy {policy!r}; choose from {list(ADMISSIONS)}")
        with self._lock:
            self.policy, self._may_admit = policy, ADMISSIONS[policy]

    def stats(self) -> dict:
        with self._lock:
            return self._stats()

    def _stats(self) -> dict:
        c = self.cache
        return {
            "running": len(self.running),
            "waiting": len(self.waiting),
            "blocks_total": c.num_blocks,
            "blocks_used": c.blocks_used,
            "blocks_free": c.blocks_free,
            "block_size": c.block_size,
            "kv_bytes_reserved": c.blocks_used * c.bytes_per_block,
            "kv_bytes_used": c.tokens_cached * c.bytes_per_token,
            "tokens_generated": self._tokens_generated,
            "steps": self._steps,
            "preemptions": self._preemptions,
        }

    def _requests(self):
        yield from self.waiting
        yield from self.running

    # ------------------------------------------------------------------ scheduling

    def step(self) -> list[StepOutput]:
        """One iteration: admit, schedule (every decode, prompt chunks within the budget), take
        blocks (preempting when the pool is full), run the forward, sample, retire the finished."""
        with self._lock:
            return self._step()

    def _step(self) -> list[StepOutput]:
        self._steps += 1
        self._admit()
        plan = sorted(self._allocate(self._schedule()), key=lambda rn: rn[1] > 1)  # one-token rows first
        if not plan:
            return []
        with torch.inference_mode(), keep_weights(self._kept):
            logits = self._forward(plan)
        sampled = [r for r, n in plan if r.read + n == r.total]  # they have read everything: a new token each
        for r, n in plan:
            self.cache.advance(r.id, n)
            r.read += n
        if not sampled:
            return []
        choices = choose(logits, [r.params for r in sampled], [r.generator for r in sampled])
        outputs = []
        for r, (token, logprob, top) in zip(sampled, choices):
            r.out.append(token)
            self._tokens_generated += 1
            reason = ("stop" if token in r.params.stop_token_ids
                      else "length" if len(r.out) >= r.params.max_tokens else None)
            if reason is not None:
                self.running.remove(r)
                self.cache.release(r.id)
            outputs.append(StepOutput(r.id, token, logprob, top, reason is not None, reason))
        return outputs

    def _admit(self) -> None:
        """Move waiting requests into the batch, first come first served, while there is a batch
        slot and the free blocks cover all they have to read, beyond the blocks the running
        requests still need for what they have to read (so an admitted prompt is not starved by
        a later one)."""
        if not self._may_admit(self.running):
            return
        promised = sum(self.cache.blocks_missing(r.id, r.total) for r in self.running)
        while self.waiting and len(self.running) < self.max_batch:
            need = self.cache.blocks_for(self.waiting[0].total)
            if self.cache.blocks_free - promised < need:
                break
            promised += need
            self.running.append(self.waiting.popleft())

    def _schedule(self) -> list[tuple[_Request, int]]:
        """(request, tokens to read this step): one for each request with only its newest token
        unread, then prompt chunks, oldest request first, within ``prefill_chunk`` tokens."""
        decodes = [(r, 1) for r in self.running if r.total - r.read == 1]
        chunks, budget = [], self.prefill_chunk
        for r in self.running:
            left = r.total - r.read
            if left > 1 and budget > 0:
                chunks.append((r, min(left, budget)))
                budget -= chunks[-1][1]
        return decodes + chunks

    def _allocate(self, plan: list[tuple[_Request, int]]) -> list[tuple[_Request, int]]:
        """The part of ``plan`` that got its blocks. A request short of a block preempts the most
        recently admitted one, itself if it is that one, until the block is free."""
        kept = []
        for r, n in plan:
            if r not in self.running:  # preempted for an older request earlier in this loop
                continue
            while not self.cache.reserve(r.id, r.read + n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is r:
                    break
            else:
                kept.append((r, n))
        return [(r, n) for r, n in kept if r in self.running]

    def _preempt(self, r: _Request) -> None:
        self.running.remove(r)
        self.cache.release(r.id)
        r.read = 0  # read again from the start: prompt + what it has produced
        self.waiting.appendleft(r)
        self._preemptions += 1

    # ------------------------------------------------------------------ the forward

    def _forward(self, plan: list[tuple[_Request, int]]) -> torch.Tensor:
        """Logits (R, vocab) at the last token of each planned request that reads its last token
        this step, in plan order (the one-token rows first, as ``step`` sorts them)."""
        model, batch = self.model, _Batch(plan, self.cache, self.device)
        x = embed(model, batch.ids)  # (1, N, C)
        if self._added_positions is not None:
            x = x + self._added_positions[batch.positions]
        rope = model.wpe.rotary(0, batch.max_position + 1, self.device)
        if rope is not None:
            rope = (rope[0][batch.positions], rope[1][batch.positions])  # (N, hs) each: every token at its position
        n = batch.positions.numel()
        for block in model.h:
            a = block.attn
            nh, n_kv, hs = a.n_head, a.n_kv_head, a.head_dim
            qkv = a.project_qkv(block.ln_1.forward(x)).view(1, n, nh + 2 * n_kv, hs).transpose(1, 2)
            qk, v = qkv.split((nh + n_kv, n_kv), dim=1)  # (1, nh + n_kv, N, hs), (1, n_kv, N, hs)
            if rope is not None:
                qk = apply_rotary(qk, *rope)
            q, k = qk.split((nh, n_kv), dim=1)
            self.cache.write(a.layer_idx, batch.slots, k[0].transpose(0, 1), v[0].transpose(0, 1))  # (N, n_kv, hs)
            x = x + a.o_proj.forward(self._attend(a, q, k, v, batch)[None])
            x = x + block.mlp.forward(block.ln_2.forward(x))
        h = x[0, batch.last]  # (R, C): only the rows that produce a token need the head
        return model.lm_head.forward(model.ln_f.forward(h))

    def _attend(self, a, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """Attention output (N, nh·hs) of layer ``a`` for queries ``q`` (1, nh, N, hs), each row
        over its own request's keys, read from the pool through its block table; a request's
        first chunk has no earlier keys, so it takes its new ones ``k_new``, ``v_new`` (1, n_kv,
        N, hs) as they are rather than reading them back."""
        nh, n_kv, hs, d = a.n_head, a.n_kv_head, a.head_dim, batch.n_decode
        ys = []
        if d:
            k, v = self.cache.gather(a.layer_idx, batch.decode_tables, batch.decode_len)  # (D, n_kv, L, hs)
            # GQA as in _decode_step: the query heads that share a key/value head are its rows
            qd = q[0, :, :d].transpose(0, 1).reshape(d, n_kv, nh // n_kv, hs)
            y = F.scaled_dot_product_attention(qd, k, v, attn_mask=batch.decode_mask,
                                               scale=a.pattern.scale)  # (D, n_kv, n_rep, hs)
            ys.append(y.reshape(d, nh * hs))
        start = d
        for tables, seen, n, mask in batch.chunks:
            if seen:
                k, v = self.cache.gather(a.layer_idx, tables, seen + n)  # (1, n_kv, seen + n, hs)
            else:
                k, v = k_new[:, :, start : start + n], v_new[:, :, start : start + n]
            y = sdpa_attention(q[:, :, start : start + n], k, v, mask=mask, scale=a.pattern.scale)  # (1, nh, n, hs)
            ys.append(y[0].transpose(0, 1).reshape(n, nh * hs))
            start += n
        return torch.cat(ys)


class _Batch:
    """One step's flat batch, laid out once for every layer: the tokens (1, N) and their positions
    and pool slots (N,), the rows whose logits are wanted, and how each row attends. The one-token
    rows come first and attend together as decode rows (a one-token prompt chunk sees all of its
    request's keys, as a decode does): block tables (D, max_blocks), the longest length, and a mask
    (D, 1, 1, L) hiding each row's padding when lengths differ. Then one entry per longer prompt
    chunk: its block table, the positions already cached, its length, and a causal mask offset by
    those positions (None for a first chunk: plain causal)."""

    def __init__(self, plan: list[tuple[_Request, int]], cache: PagedKVCache, device: torch.device):
        ids, pos, slots, last = [], [], [], []
        for r, n in plan:
            ids += r.tokens(r.read, n)
            pos += range(r.read, r.read + n)
            slots.append(cache.slots(r.id, r.read, n))
            if r.read + n == r.total:
                last.append(len(ids) - 1)
        self.ids = torch.tensor(ids, device=device)[None]
        self.positions = torch.tensor(pos, device=device)
        self.max_position = max(pos)
        self.slots = torch.cat(slots).to(device)
        self.last = last
        decodes = [r for r, n in plan if n == 1]
        self.n_decode = len(decodes)
        self.decode_tables = self.decode_mask = None
        self.decode_len = max((r.read + 1 for r in decodes), default=0)
        if decodes:
            self.decode_tables = cache.table_tensor([r.id for r in decodes], device)
            lengths = [r.read + 1 for r in decodes]
            if min(lengths) != self.decode_len:
                ends = torch.tensor(lengths, device=device)
                self.decode_mask = (torch.arange(self.decode_len, device=device)[None, :] < ends[:, None])[:, None, None]
        self.chunks = [(cache.table_tensor([r.id], device), r.read, n,
                        None if r.read == 0 else torch.ones(n, r.read + n, dtype=torch.bool, device=device).tril(r.read))
                       for r, n in plan[self.n_decode:]]
