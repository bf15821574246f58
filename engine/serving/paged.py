"""The paged KV cache (Kwon et al. 2023, PagedAttention / vLLM): keys and values live in a pool of
fixed-size blocks shared by every sequence, and each sequence owns a block table, the list of
its blocks in position order. Position ``p`` of a sequence sits in block ``table[p // block_size]``
at offset ``p % block_size``.

A contiguous cache must reserve a sequence's whole possible length when it starts; a paged one
takes a block at a time as the sequence grows, so at most one partly filled block per sequence
is wasted, and a finished sequence's blocks go straight back to the free list for the next.
"""

from __future__ import annotations

import torch


class PagedKVCache:
    """Per layer one pool of keys and one of values, each (num_blocks + 1, n_kv_head, block_size,
    head_dim), the last block being ``pad_block`` (``k[layer]``, ``v[layer]``: views of one
    (n_layer, ...) tensor each), a free list of block ids, and per sequence its block table and
    cached length.

    The pools are allocated empty, so memory the operating system has not handed out yet is
    committed only as blocks come into use (the default pool holds ``max_batch`` whole contexts,
    rarely all in use). Attention reads a padded stretch of blocks and masks the positions past a
    sequence's length, but a mask hides only finite values (0·NaN is NaN): so a block is zeroed
    when it is taken, and tables are padded with one extra block, ``pad_block``, kept at zero
    (vLLM's null block)."""

    def __init__(self, *, n_layer: int, n_kv_head: int, head_dim: int, block_size: int, num_blocks: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if block_size < 1 or num_blocks < 1:
            raise ValueError(f"block_size ({block_size}) and num_blocks ({num_blocks}) must be at least 1")
        self.block_size, self.num_blocks = block_size, num_blocks
        shape = (n_layer, num_blocks + 1, n_kv_head, block_size, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.pad_block = num_blocks
        self.k[:, self.pad_block] = 0
        self.v[:, self.pad_block] = 0
        # a stack: the block freed last is reused first, so the blocks ever touched (the memory
        # committed) stay as few as the peak in use
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))
        self.tables: dict[str, list[int]] = {}
        self.lengths: dict[str, int] = {}  # positions written per sequence
        self.bytes_per_token = 2 * n_layer * n_kv_head * head_dim * self.k.element_size()  # K and V, all layers
        self.bytes_per_block = self.bytes_per_token * block_size

    @staticmethod
    def bytes_per_token_of(model) -> int:
        """Bytes one cached position of ``model`` takes (keys and values of every layer), for
        sizing a pool before building it."""
        c = model.config
        elem = model.wte.weight.element_size()
        return 2 * c.n_layer * (c.n_kv_head or c.n_head) * c.head_size * elem

    def blocks_for(self, n_tokens: int) -> int:
        """Blocks that hold ``n_tokens`` positions."""
        return -(-n_tokens // self.block_size)

    @property
    def blocks_free(self) -> int:
        return len(self.free)

    @property
    def blocks_used(self) -> int:
        return self.num_blocks - len(self.free)

    @property
    def tokens_cached(self) -> int:
        return sum(self.lengths.values())

    def blocks_missing(self, seq_id: str, n_tokens: int) -> int:
        """Blocks ``seq_id`` still needs to hold ``n_tokens`` positions."""
        return max(0, self.blocks_for(n_tokens) - len(self.tables.get(seq_id, ())))

    def reserve(self, seq_id: str, n_tokens: int) -> bool:
        """Give ``seq_id`` the blocks it lacks to hold ``n_tokens`` positions, one at a time from
        the free list; False (and nothing taken) when too few are free."""
        missing = self.blocks_missing(seq_id, n_tokens)
        if missing > len(self.free):
            return False
        self.lengths.setdefault(seq_id, 0)
        taken = [self.free.pop() for _ in range(missing)]
        self.tables.setdefault(seq_id, []).extend(taken)
        if taken:
            self.k[:, taken] = 0
            self.v[:, taken] = 0
        return True

    def release(self, seq_id: str) -> None:
        """Return ``seq_id``'s blocks to the free list and forget it (unknown ids: nothing)."""
        self.free.extend(reversed(self.tables.pop(seq_id, [])))
        self.lengths.pop(seq_id, None)

    def slots(self, seq_id: str, start: int, n: int) -> torch.Tensor:
        """Flat slot ids (block · block_size + offset) of positions ``start .. start + n - 1``,
        which must already have blocks (``reserve``)."""
        table, bs = self.tables[seq_id], self.block_size
        return torch.tensor([table[p // bs] * bs + p % bs for p in range(start, start + n)], dtype=torch.long)

    def advance(self, seq_id: str, n: int) -> None:
        """Record that ``n`` more positions of ``seq_id`` were written."""
        self.lengths[seq_id] += n

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new keys and values (N, n_kv_head, head_dim) at flat ``slots`` (N,) of ``layer``."""
        blocks, offsets = slots // self.block_size, slots % self.block_size
        self.k[layer][blocks, :, offsets] = k
        self.v[layer][blocks, :, offsets] = v

    def table_tensor(self, seq_ids: list[str], device) -> torch.Tensor:
        """The block tables of ``seq_ids`` as one (S, max_blocks) long tensor, short ones padded
        with ``pad_block`` (whose positions the caller's mask hides)."""
        tables = [self.tables[s] for s in seq_ids]
        width = max(len(t) for t in tables)
        return torch.tensor([t + [self.pad_block] * (width - len(t)) for t in tables], dtype=torch.long, device=device)

    def gather(self, layer: int, tables: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the first ``length`` positions through block ``tables`` (S, max_blocks):
        each (S, n_kv_head, length, head_dim), positions in order."""
        s, nb = tables.shape

        def read(pool: torch.Tensor) -> torch.Tensor:
            blocks = pool[tables]  # (S, max_blocks, n_kv, block_size, hs)
            n_kv, hs = blocks.size(2), blocks.size(4)
            return blocks.transpose(1, 2).reshape(s, n_kv, nb * self.block_size, hs)[:, :, :length]

        return read(self.k[layer]), read(self.v[layer])
