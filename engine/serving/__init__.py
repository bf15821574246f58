"""serving: many requests decoded at once, for a serving process to drive.

    engine = ServingEngine(model, block_size=16, max_batch=32, prefill_chunk=256)
    engine.add("a", prompt_ids, SamplingParams(max_tokens=64, temperature=0))
    while engine.has_work():
        for out in engine.step():        # StepOutput: request_id, token, logprob, top, finished, finish_reason
            ...

``paged.py``: ``PagedKVCache`` (a block pool, a free list, a block table per sequence);
``sampling.py``: ``SamplingParams``, ``StepOutput`` and each row's token choice; ``engine.py``:
``ServingEngine`` (continuous batching, chunked prefill, recompute preemption).
"""

from .engine import ServingEngine
from .paged import PagedKVCache
from .sampling import SamplingParams, StepOutput

__all__ = ["PagedKVCache", "SamplingParams", "ServingEngine", "StepOutput"]
