"""A fine-tune's examples in the base model's own chat template (SmolLM2's ``<|im_start|>``
turns, its default system message included), as the engine's SFT and DPO data hold them.

Each example is tokenized as the model will read it at inference: the prompt is
``apply_chat_template([user], add_generation_prompt=True)`` and the response the tokens the full
conversation adds after it, up to and including the end of turn (``<|im_end|>``), so the model
learns to stop. They go into ``engine.data.chat.ChatData`` / ``PreferenceData``, whose batches
(``pad_rows``) carry loss on the responses only, and so into the engine's objectives
(``ChatSFT``, ``DPO``) unchanged.
"""

from __future__ import annotations

import torch

from ..config.errors import ConfigError
from ..data.chat import ChatData, PreferenceData, _synthetic_texts, corrupt, read_jsonl
from . import instructions
from .config import FinetuneSpec, data_config


def _split(items: list, n_val: int) -> tuple[list, list]:
    n_val = max(1, min(n_val, len(items) - 1))
    return items[:-n_val], items[-n_val:]


def _texts(spec: FinetuneSpec) -> tuple[list, list, str]:
    """(train, val, description): SFT items are (messages, response); DPO's (messages, chosen, rejected)."""
    source, dpo = spec.data.source, spec.objective == "dpo"
    user = lambda p: [{"role": "user", "content": p}]  # noqa: E731
    if source == "builtin":
        train, val = instructions.split()
        if dpo:
            rows = lambda pairs: [(user(p), r, instructions.DPO_REJECTED) for p, r in pairs]  # noqa: E731
            what = f"the built-in instruction set's answers preferred over {instructions.DPO_REJECTED!r}"
        else:
            rows = lambda pairs: [(user(p), r) for p, r in pairs]  # noqa: E731
            what = "the built-in instruction set (short questions, one-sentence answers)"
        return rows(train), rows(val), what
    if source == "synthetic":
        _, train, val, generator = _synthetic_texts(data_config(spec))
        train = train[:512]  # a fine-tune sees a few hundred examples
        if dpo:
            rows = lambda pairs: [(user(p), r, corrupt(r, generator)) for p, r in pairs]  # noqa: E731
        else:
            rows = lambda pairs: [(user(p), r) for p, r in pairs]  # noqa: E731
        return rows(train), rows(val[:64]), f"synthetic {spec.data.task} instructions"
    # an uploaded JSONL file
    lines = read_jsonl(spec.data.path, ("prompt", "chosen", "rejected") if dpo else ("prompt", "response"),
                       messages=not dpo)
    if dpo:
        items = [(user(r["prompt"]), r["chosen"], r["rejected"]) for r in lines]
    else:
        items = [(r["messages"][:-1], r["messages"][-1]["content"]) if "messages" in r else (user(r["prompt"]), r["response"])
                 for r in lines]
    train, val = _split(items, max(1, len(items) // 10))
    return train, val, f"{len(items)} examples from the uploaded file"


def encode_example(tokenizer, messages: list[dict], response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one turn in the tokenizer's chat template."""
    prompt = tokenizer.encode_chat(messages, add_generation_prompt=True)
    full = tokenizer.encode_chat(messages + [{"role": "assistant", "content": response}], add_generation_prompt=False)
    if full[: len(prompt)] != prompt:  # a template whose answer re-tokenizes the prompt's end
        full = prompt + tokenizer.encode(response) + [tokenizer.eos_token_id]
    reply = full[len(prompt):]
    if tokenizer.eos_token_id in reply:
        reply = reply[: reply.index(tokenizer.eos_token_id) + 1]  # up to the end of turn, not the newline after
    return prompt, reply


def load_examples(spec: FinetuneSpec, tokenizer):
    """The fine-tune's data: ``ChatData`` (SFT) or ``PreferenceData`` (DPO) of token ids; ``ConfigError``
    on ``data.*`` for an unreadable file or examples whose prompt leaves no room in ``max_tokens``."""
    train, val, what = _texts(spec)

    def encode(items):
        out = []
        for messages, *responses in items:
            encoded = [encode_example(tokenizer, messages, r) for r in responses]
            out.append((encoded[0][0], *(reply for _, reply in encoded)))
        return out

    train_ids, val_ids = encode(train), encode(val)
    cls = PreferenceData if spec.objective == "dpo" else ChatData
    longest = max(len(ex[0]) for ex in train_ids + val_ids)
    if longest >= spec.data.max_tokens:
        raise ConfigError({"data.max_tokens": f"max_tokens ({spec.data.max_tokens}) leaves no room for a response "
                                              f"after the longest prompt ({longest} tokens in the chat template)"})
    n = len(train_ids) + len(val_ids)
    return cls(train_ids, val_ids, tokenizer, spec.data.source,
               f"{what}: {len(train_ids)} training and {len(val_ids)} held-out {'pairs' if spec.objective == 'dpo' else 'examples'} "
               f"of {n}, in the model's chat template", synthetic=False)


def first_batch_shape(data, spec: FinetuneSpec) -> tuple[int, int]:
    """(rows, length) of a training batch (for the memory estimate and tokens per step)."""
    x, _ = data.get_batch("train", spec.train.batch_size, spec.data.max_tokens, torch.Generator().manual_seed(0))
    return x.shape
