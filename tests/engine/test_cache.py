import torch

from engine.cache import KVCache, SlidingWindowCache


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
