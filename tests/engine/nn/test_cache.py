import torch

from engine.nn.cache import KVCache, LayerWindowCache, SlidingWindowCache


def kv(t, start=0):
    x = torch.arange(start, start + t, dtype=torch.float32).view(1, 1, t, 1).expand(2, 3, t, 4)
    return x, -x


def test_kv_cache_appends_per_layer():
    cache = KVCache()
    assert cache.get_seq_length() == 0
    for layer in range(2):
        k, v = cache.update(*kv(5), layer)
        assert k.shape == (2, 3, 5, 4)
    k, v = cache.update(*kv(1, 5), 0)
    assert k.shape == (2, 3, 6, 4) and torch.equal(k[0, 0, :, 0], torch.arange(6.0)) and torch.equal(v, -k)
    assert cache.get_seq_length(0) == 6 and cache.get_seq_length(1) == 5 and len(cache) == 2


def test_sliding_window_cache_stays_bounded():
    cache = SlidingWindowCache(window=4)
    k, _ = cache.update(*kv(6), 0)  # a prefill longer than the window still sees all its keys
    assert k.size(2) == 6 and cache.keys[0].size(2) == 4
    for pos in range(6, 20):
        k, v = cache.update(*kv(1, pos), 0)
        assert k.size(2) == 5 and torch.equal(k[0, 0, :, 0], torch.arange(pos - 4.0, pos + 1))
        assert cache.keys[0].size(2) <= 4 and cache.values[0].size(2) <= 4
        assert cache.get_seq_length() == pos + 1


def test_layer_window_cache_keeps_a_window_per_layer():
    """Local and global layers (Gemma 2's hybrid cache): a windowed layer keeps its last positions, a
    None layer all of them, and a sized cache pre-allocates only the unbounded layers."""
    cache = LayerWindowCache([4, None], capacity=20)
    for layer in range(2):
        k, _ = cache.update(*kv(6), layer)
        assert k.size(2) == 6
    for pos in range(6, 20):
        local, _ = cache.update(*kv(1, pos), 0)
        whole, _ = cache.update(*kv(1, pos), 1)
        assert torch.equal(local[0, 0, :, 0], torch.arange(pos - 4.0, pos + 1))
        assert torch.equal(whole[0, 0, :, 0], torch.arange(pos + 1.0))
    assert [k.size(2) for k in cache.keys] == [4, 20]
    assert cache._k[0].size(2) <= 2 * (4 + 1) and cache._k[1].size(2) == 20


def test_generation_after_a_fused_adamw_step_sees_the_new_weights(tiny_config):
    """Fused AdamW updates weights in place without bumping their version: generation must not
    serve projections cached from before the step."""
    import dataclasses

    import torch

    from engine import build_model

    cfg = dataclasses.replace(tiny_config, vocab_size=50, position="rope", n_kv_head=2)
    torch.manual_seed(0)
    model = build_model(cfg)
    idx = torch.randint(0, 50, (1, 6))
    model.eval()
    before = model.generate(idx, 5, temperature=0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.5, fused=True)
    _, loss = model(idx, idx)
    loss.backward()
    opt.step()
    model.eval()
    cached = model.generate(idx, 8, temperature=0, use_cache=True)
    uncached = model.generate(idx, 8, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)
    with torch.no_grad():
        logits, _ = model(cached[:, :-1])
    assert torch.equal(logits[0, 5:].argmax(-1), cached[0, 6:])  # each new token is the fresh argmax
    assert before.shape == (1, 11)


def test_a_kept_weights_store_outlives_its_span():
    """``keep_weights(store)`` fills the caller's dict, and a later span given the same dict reuses
    its concatenated weights instead of making them again (the serving engine's steps)."""
    from engine.nn.cache import Linear, joint_linear, keep_weights

    a, b = Linear(4, 3), Linear(4, 2)
    x = torch.randn(5, 4)
    store = {}
    with torch.no_grad(), keep_weights(store):
        first = joint_linear(x, a, "ab", (a, b))
    assert len(store) == 1
    kept = next(iter(store.values()))[0]
    with torch.no_grad(), keep_weights(store):
        again = joint_linear(x, a, "ab", (a, b))
    assert next(iter(store.values()))[0] is kept and torch.equal(first, again)
    torch.testing.assert_close(first, torch.cat([a(x), b(x)], dim=-1))
