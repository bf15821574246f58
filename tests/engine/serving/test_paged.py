"""engine.serving.paged: blocks are taken one at a time as a sequence grows and given back when it
ends; keys written through the block tables are read back in position order."""

import torch

from engine.serving import PagedKVCache


def make_cache(num_blocks=6, block_size=4, n_kv_head=2, head_dim=3):
    return PagedKVCache(n_layer=2, n_kv_head=n_kv_head, head_dim=head_dim, block_size=block_size,
                        num_blocks=num_blocks)


def test_blocks_are_taken_as_the_sequence_grows_and_returned_when_released():
    cache = make_cache()
    held = []
    for n_tokens in range(1, 13):
        assert cache.reserve("a", n_tokens)
        held.append(len(cache.tables["a"]))
    assert held == [1] * 4 + [2] * 4 + [3] * 4  # a block per 4 positions, no more
    assert cache.blocks_used == 3 and cache.blocks_free == 3
    cache.release("a")
    assert cache.blocks_used == 0 and "a" not in cache.tables and "a" not in cache.lengths
    cache.release("unknown")  # nothing to give back
    assert cache.blocks_free == 6


def test_a_reservation_that_does_not_fit_takes_nothing():
    cache = make_cache(num_blocks=3)
    assert cache.reserve("a", 8)
    assert not cache.reserve("b", 9)  # 3 blocks wanted, 1 free
    assert cache.blocks_free == 1 and cache.tables.get("b", []) == []
    assert cache.reserve("b", 4) and cache.blocks_free == 0


def test_sizes_in_bytes():
    cache = make_cache(block_size=4, n_kv_head=2, head_dim=3)
    assert cache.bytes_per_token == 2 * 2 * 2 * 3 * 4  # K and V, 2 layers, 2 heads of 3, float32
    assert cache.bytes_per_block == 4 * cache.bytes_per_token
    assert cache.blocks_for(0) == 0 and cache.blocks_for(4) == 1 and cache.blocks_for(5) == 2


def test_interleaved_writes_read_back_in_position_order():
    """Two sequences grow in turns, so their blocks interleave in the pool; each one's gather
    still returns its own keys and values, position by position."""
    cache = make_cache(num_blocks=8)
    written = {"a": [], "b": []}
    lengths = {"a": 0, "b": 0}
    for seq, n in [("a", 3), ("b", 6), ("a", 1), ("a", 5), ("b", 1), ("b", 2)]:
        start = lengths[seq]
        assert cache.reserve(seq, start + n)
        k = torch.randn(n, 2, 3)
        cache.write(1, cache.slots(seq, start, n), k, -k)
        cache.advance(seq, n)
        written[seq].append(k)
        lengths[seq] += n
    assert cache.lengths == lengths and cache.tokens_cached == 9 + 9
    assert set(cache.tables["a"]).isdisjoint(cache.tables["b"])
    tables = cache.table_tensor(["a", "b"], "cpu")
    k, v = cache.gather(1, tables, 9)  # (2, n_kv, 9, hs)
    for row, seq in enumerate(["a", "b"]):
        expected = torch.cat(written[seq]).transpose(0, 1)  # (n_kv, 9, hs)
        assert torch.equal(k[row], expected) and torch.equal(v[row], -expected)
    k0, _ = cache.gather(0, tables, 9)
    assert not k0.any()  # layer 0 was never written: its blocks were zeroed when taken


def test_taken_blocks_and_the_padding_block_are_zero_whatever_the_memory_held():
    """The pools start uninitialised: a block is zeroed as it is taken, and the padding block
    stays zero, so masked reads past a sequence's end meet no NaN."""
    cache = make_cache(num_blocks=4)
    cache.k[:, : cache.num_blocks] = float("nan")
    cache.v[:, : cache.num_blocks] = float("nan")
    cache.reserve("a", 5)
    k, v = cache.gather(1, cache.table_tensor(["a"], "cpu"), 8)
    assert not k.isnan().any() and not v.isnan().any()
    assert cache.reserve("b", 1)
    assert cache.table_tensor(["a", "b"], "cpu")[1].tolist() == [cache.tables["b"][0], cache.pad_block]
    assert not cache.k[:, cache.pad_block].any()


def test_slots_follow_the_block_table():
    cache = make_cache(num_blocks=4, block_size=2)
    cache.reserve("x", 1)
    cache.reserve("y", 2)
    cache.reserve("x", 4)  # x's second block comes after y's
    table = cache.tables["x"]
    assert cache.slots("x", 0, 4).tolist() == [table[0] * 2, table[0] * 2 + 1, table[1] * 2, table[1] * 2 + 1]
