"""The fast decoding path: KV caches written in place into buffers, and ``generate``'s one-token
step with grouped query heads. Each must give what the plain computation gives."""

import dataclasses
import itertools

import pytest
import torch

from engine import build_model
from engine.nn.attention import ATTENTIONS
from engine.nn.cache import KVCache, SlidingWindowCache


def kv(t, start=0, b=2, h=3, hs=4):
    x = torch.arange(start, start + t, dtype=torch.float32).view(1, 1, t, 1).expand(b, h, t, hs)
    return x, -x


@pytest.mark.parametrize("capacity", [None, 3, 50])
def test_buffered_cache_equals_concatenation(capacity):
    """Whatever the buffer's room (grown by doubling, or sized once), each update returns what
    concatenating every update so far would."""
    cache, seen = KVCache(capacity), []
    for start, t in [(0, 5), (5, 1), (6, 1), (7, 3)] + [(p, 1) for p in range(10, 30)]:
        k_new, v_new = kv(t, start)
        seen.append(k_new)
        k, v = cache.update(k_new, v_new, 0)
        assert torch.equal(k, torch.cat(seen, dim=2)) and torch.equal(v, -k)
        assert cache.get_seq_length() == start + t and torch.equal(cache.keys[0], k)


def test_earlier_views_survive_later_updates():
    """``update`` returns views of the buffer; later writes go past them, and growing moves the
    kept positions to a new buffer, so a view handed out earlier never changes."""
    cache = KVCache()
    k0, _ = cache.update(*kv(4), 0)
    before = k0.clone()
    for pos in range(4, 40):  # several doublings
        cache.update(*kv(1, pos), 0)
    assert torch.equal(k0, before)


def test_a_sized_cache_never_reallocates():
    cache = KVCache(capacity=12)
    k, _ = cache.update(*kv(4), 0)
    ptr = k.untyped_storage().data_ptr()
    for pos in range(4, 12):
        k, _ = cache.update(*kv(1, pos), 0)
        assert k.untyped_storage().data_ptr() == ptr
    assert k.size(2) == 12


@pytest.mark.parametrize("prefill", [2, 4, 9])
def test_sliding_cache_buffer_stays_bounded(prefill):
    window = 4
    cache = SlidingWindowCache(window)
    cache.update(*kv(prefill), 0)
    for pos in range(prefill, 60):
        k, _ = cache.update(*kv(1, pos), 0)
        assert torch.equal(k[0, 0, :, 0], torch.arange(max(0, pos - window), pos + 1.0))
        # the buffer behind the view: at most twice the kept window plus the new position
        assert k.untyped_storage().nbytes() <= max(prefill, 2 * (window + 1)) * k[:, :, :1].numel() * 4


@pytest.mark.parametrize("n_kv_head,position", list(itertools.product([None, 2, 1], ["rope", "learned"])))
def test_grouped_decoding_step_equals_forward_at_batch_8(n_kv_head, position, tiny_config):
    """The lean step attends with the query heads of each key/value head as rows of one
    attention (MHA, GQA, MQA); at batch 8 its logits equal ``forward``'s."""
    cfg = dataclasses.replace(tiny_config, n_kv_head=n_kv_head, position=position, vocab_size=50)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model._lean_decoding()
    idx = torch.randint(cfg.vocab_size, (8, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.make_cache(capacity=12)
        model(idx[:, :5], cache=cache)
        steps = [model._decode_step(idx[:, i : i + 1], cache, i) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 5:], rtol=1e-5, atol=1e-5)


def test_lean_step_scales_embeddings_and_scores(tiny_config):
    """``embed_scale`` and ``query_pre_attn_scalar`` keep the lean step; it applies both as ``forward`` does."""
    cfg = dataclasses.replace(tiny_config, n_kv_head=2, position="rope", vocab_size=50, embed_scale=True,
                              query_pre_attn_scalar=3)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model._lean_decoding()
    idx = torch.randint(cfg.vocab_size, (2, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.make_cache(capacity=12)
        model(idx[:, :5], cache=cache)
        steps = [model._decode_step(idx[:, i : i + 1], cache, i) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 5:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", list(ATTENTIONS))
@pytest.mark.parametrize("n_kv_head,head_dim", [(None, None), (2, None), (1, None), (2, 12)])
def test_batched_generate_cached_equals_uncached(attention, n_kv_head, head_dim, tiny_config):
    """Greedy tokens at batch 8, past block_size (so learned positions restart the cache and a
    sliding window wraps its buffer several times)."""
    cfg = dataclasses.replace(tiny_config, attention=attention, n_kv_head=n_kv_head, position="learned",
                              vocab_size=50, head_dim=head_dim)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    prompt = torch.randint(cfg.vocab_size, (8, 5))
    n = 2 * cfg.block_size
    for m in (model, build_model(dataclasses.replace(cfg, position="rope")).eval()):
        assert torch.equal(m.generate(prompt, n, temperature=0), m.generate(prompt, n, temperature=0, use_cache=False))
