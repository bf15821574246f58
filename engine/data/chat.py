"""Chat data for supervised fine-tuning (SFT) and preference pairs for DPO.

The chat template is plain text, so the char and byte tokenizers cover it and a model
pretrained with the byte tokenizer can be fine-tuned on chats without a new vocabulary::

    <|user|>
    Reverse: abcd
    <|assistant|>
    dcba<|end|>

``render(messages)`` -> (prompt, response): everything up to and including the assistant
header is the prompt; the last assistant message and ``END`` are the response, the only
tokens that carry loss (``parse`` is its inverse). Earlier turns of a conversation are part
of the prompt.

Data sources (the ``DataConfig.source`` chosen with ``TrainConfig.objective``, see
``data.load_data``), each with ``DATA_SOURCES``' interface (``tokenizer``, ``vocab_size``,
``describe``, ``check_block_size``, ``get_batch``, ``eval_batches``, ``sample``, ``scored``):

* ``ChatFile`` / ``SyntheticChat`` (objective "sft"): an uploaded JSONL file with lines
  ``{"prompt": ..., "response": ...}`` or ``{"messages": [{"role", "content"}, ...]}``, or a
  synthetic task phrased as an instruction ("Reverse: abcd" -> "dcba"). Batches are (x, y)
  with y -1 on the prompt and the padding.
* ``PreferenceFile`` / ``SyntheticPreference`` (objective "dpo"): lines
  ``{"prompt", "chosen", "rejected"}``, or a synthetic task whose chosen response is the right
  answer and rejected one the answer with one item changed. Batches are (x, y) of 2B rows:
  the B chosen rows, then the B rejected ones, padded to one length.

The last ``val_fraction`` of a file's examples (at least one) is held out; synthetic sets hold
out the task's held-out prompts (``data.SyntheticData``) and train on ``TRAIN_EXAMPLES`` others
drawn once with the data seed.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import torch

from ..config.errors import ConfigError
from .tasks import DIGITS, LETTERS, TASKS
from .tokenizers import TOKENIZERS, ByteTokenizer, CharTokenizer, FileTokenizer

if TYPE_CHECKING:
    from ..config.schema import DataConfig

ROLES = ("system", "user", "assistant")
END = "<|end|>"
VAL_EXAMPLES = 256  # held-out examples scored at each evaluation, at most


def header(role: str) -> str:
    return f"<|{role}|>\n"


def render(messages: list[dict]) -> tuple[str, str]:
    """(prompt, response) text of a conversation whose last message is the assistant's."""
    *history, last = messages
    prompt = ""
    for m in history:
        prompt += header(m["role"]) + m["content"] + (END if m["role"] == "assistant" else "") + "\n"
    return prompt + header("assistant"), last["content"] + END


def render_pair(prompt: str, response: str) -> tuple[str, str]:
    return render([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])


def parse(text: str) -> list[dict]:
    """The messages of a rendered conversation (the inverse of ``render``: prompt + response)."""
    messages, role, pos = [], None, 0
    while pos < len(text):
        found = [(text.find(header(r), pos), r) for r in ROLES]
        start, next_role = min(((i, r) for i, r in found if i >= 0), default=(len(text), None))
        if role is not None:
            content = text[pos:start]
            content = content.removesuffix("\n") if next_role else content
            if role == "assistant":
                content = content.removesuffix(END)
            messages.append({"role": role, "content": content})
        if next_role is None:
            break
        role, pos = next_role, start + len(header(next_role))
    return messages


def cut_response(text: str) -> str:
    """A generated response up to its end marker."""
    return text.split(END, 1)[0]


# ---------------------------------------------------------------------------- JSONL files


def read_jsonl(path: str | None, fields: tuple[str, ...], *, messages: bool = False) -> list[dict]:
    """The objects of a JSONL file, each with the string ``fields`` (or, with ``messages``, a
    "messages" list instead); ``ConfigError`` on "data.path" naming the line of any problem."""
    if not path:
        raise ConfigError({"data.path": "path is required when source is 'jsonl' (an uploaded JSONL file)"})
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError({"data.path": f"file not found: {path}"}) from None
    except OSError as e:
        raise ConfigError({"data.path": f"cannot read {path}: {e.strerror}"}) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError({"data.path": f"{path} is not UTF-8 text (invalid byte at offset {e.start})"}) from None
    name, rows = os.path.basename(path), []
    wanted = " and ".join(repr(f) for f in fields) + (" (or 'messages')" if messages else "")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue

        def fail(message, n=n):
            raise ConfigError({"data.path": f"{name}, line {n}: {message}"})

        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"invalid JSON ({e.msg} at column {e.colno})")
        if not isinstance(row, dict):
            fail(f"expected an object with {wanted}, got {type(row).__name__}")
        if messages and "messages" in row:
            _check_messages(row["messages"], fail)
        else:
            for f in fields:
                if f not in row:
                    fail(f"missing field {f!r} (each line needs {wanted})")
                if not isinstance(row[f], str):
                    fail(f"field {f!r} must be a string (got {type(row[f]).__name__})")
        rows.append(row)
    if not rows:
        raise ConfigError({"data.path": f"{name} has no examples (one JSON object per line with {wanted})"})
    if len(rows) < 2:
        raise ConfigError({"data.path": f"{name} has 1 example; at least 2 are needed, one to train on, one held out"})
    return rows


def _check_messages(messages, fail) -> None:
    if not isinstance(messages, list) or not messages:
        fail("field 'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            fail(f"messages[{i}] needs 'role' and 'content'")
        if m["role"] not in ROLES:
            fail(f"messages[{i}] has unknown role {m['role']!r}; choose from {list(ROLES)}")
        if not isinstance(m["content"], str):
            fail(f"messages[{i}].content must be a string (got {type(m['content']).__name__})")
    if messages[-1]["role"] != "assistant":
        fail("the last message must be the assistant's (the response to learn)")


def _file_tokenizer(cfg: DataConfig, text: str):
    if cfg.tokenizer == "file":
        return FileTokenizer.from_file(cfg.tokenizer_file)
    return TOKENIZERS[cfg.tokenizer].from_text(text)


def _encode(tokenizer, text: str) -> list[int]:
    try:
        return tokenizer.encode(text)
    except ValueError as e:  # a lab tokenizer without some character
        raise ConfigError({"data.tokenizer_file": f"cannot encode the data: {e}"}) from None


# ---------------------------------------------------------------------------- batching


def pad_rows(rows: list[list[int]], prompt_lens: list[int], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples (prompt + response ids) as (x, y) (N, T): y is x shifted by one, -1 on the
    prompt (the loss is on the response only) and on the padding; rows longer than
    ``block_size`` + 1 lose their end. Padding after a row cannot change its logits under
    causal attention."""
    rows = [r[: block_size + 1] for r in rows]
    t = max(len(r) for r in rows) - 1
    x = torch.zeros(len(rows), t, dtype=torch.long)  # (N, T)
    y = torch.full((len(rows), t), -1, dtype=torch.long)  # (N, T)
    for i, (r, p) in enumerate(zip(rows, prompt_lens)):
        x[i, : len(r) - 1] = torch.tensor(r[:-1])
        y[i, p - 1 : len(r) - 1] = torch.tensor(r[p:])
    return x, y


class Examples:
    """What SFT and preference data share: tokenized examples, held out at the end, batched by
    ``rows(examples, block_size)``."""

    def __init__(self, train: list, val: list, tokenizer, name: str, description: str, synthetic: bool):
        self.train_examples, self.val_examples = train, val[:VAL_EXAMPLES]
        self.tokenizer, self.vocab_size = tokenizer, tokenizer.vocab_size
        self.name, self.description, self.synthetic = name, description, synthetic
        # every row is a prompt and an answer (so the attention maps read a held-out batch's first row);
        # the objectives score exact match on synthetic sets only
        self.scored = True

    def tokens(self, example) -> list[int]:
        return example[0] + example[1]

    def n_tokens(self, examples) -> int:
        return sum(len(self.tokens(ex)) for ex in examples)

    def describe(self) -> dict:
        train = self.n_tokens(self.train_examples)
        val = self.n_tokens(self.val_examples)
        return {"vocab_size": self.vocab_size, "n_tokens": train + val, "train_tokens": train, "val_tokens": val,
                "name": self.name, "description": self.description}

    def check_block_size(self, block_size: int) -> str | None:
        """Every example's prompt must leave room for a response token (else it carries no loss)."""
        longest = max(len(ex[0]) for ex in self.train_examples + self.val_examples)
        if longest <= block_size:
            return None
        return (f"block_size ({block_size}) leaves no room for the response after the longest prompt "
                f"({longest} tokens with the chat template); raise block_size to ≥ {longest}")

    def draw(self, split: str, batch_size: int, generator: torch.Generator) -> list:
        examples = self.val_examples if split == "val" else self.train_examples
        return [examples[i] for i in torch.randint(len(examples), (batch_size,), generator=generator).tolist()]

    def get_batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator):
        return self.rows(self.draw(split, batch_size, generator), block_size)

    def eval_batches(self, split: str, batch_size: int, block_size: int, eval_iters: int):
        """The whole held-out set for "val", else ``eval_iters`` fixed training batches."""
        if split == "val":
            return [self.rows(self.val_examples[i : i + batch_size], block_size)
                    for i in range(0, len(self.val_examples), batch_size)]
        generator = torch.Generator().manual_seed(0)
        return [self.get_batch("train", batch_size, block_size, generator) for _ in range(eval_iters)]

    def sample(self, block_size: int, sample_tokens: int):
        """The first held-out prompt, answered greedily; its expected response is known."""
        prompt, response = self.val_examples[0][:2]
        budget = len(response) if self.synthetic else max(1, sample_tokens)
        return {"prompt": prompt, "expected": response, "max_new_tokens": budget, "temperature": 0.0}


class ChatData(Examples):
    """SFT examples (prompt ids, response ids)."""

    def rows(self, examples, block_size):
        return pad_rows([p + r for p, r in examples], [len(p) for p, _ in examples], block_size)


class PreferenceData(Examples):
    """Preference examples (prompt ids, chosen ids, rejected ids); a batch of B is 2B rows."""

    def tokens(self, example) -> list[int]:
        return example[0] + example[1] + example[0] + example[2]

    def rows(self, examples, block_size):
        rows = [p + c for p, c, _ in examples] + [p + r for p, _, r in examples]
        return pad_rows(rows, [len(p) for p, *_ in examples] * 2, block_size)


def _split(items: list, val_fraction: float) -> tuple[list, list]:
    n_val = max(1, int(len(items) * val_fraction))
    return items[: len(items) - n_val], items[len(items) - n_val :]


class ChatFile(ChatData):
    """An uploaded JSONL file of prompt/response pairs or conversations."""

    def __init__(self, cfg: DataConfig):
        lines = read_jsonl(cfg.path, ("prompt", "response"), messages=True)
        texts = [render(row["messages"]) if "messages" in row else render_pair(row["prompt"], row["response"])
                 for row in lines]
        tokenizer = _file_tokenizer(cfg, "".join(p + r for p, r in texts))
        examples = [(_encode(tokenizer, p), _encode(tokenizer, r)) for p, r in texts]
        name = os.path.basename(cfg.path)
        train, val = _split(examples, cfg.val_fraction)
        super().__init__(train, val, tokenizer, name,
                         f"{len(examples):,} chat examples from {name}, {len(val)} held out, "
                         f"{cfg.tokenizer} tokenizer ({tokenizer.vocab_size} symbols); loss on the responses",
                         synthetic=False)


class PreferenceFile(PreferenceData):
    """An uploaded JSONL file of (prompt, chosen, rejected) triples."""

    def __init__(self, cfg: DataConfig):
        lines = read_jsonl(cfg.path, ("prompt", "chosen", "rejected"))
        texts = [(render_pair(r["prompt"], r["chosen"]), render_pair(r["prompt"], r["rejected"])[1]) for r in lines]
        tokenizer = _file_tokenizer(cfg, "".join(p + c + r for (p, c), r in texts))
        examples = [(_encode(tokenizer, p), _encode(tokenizer, c), _encode(tokenizer, r)) for (p, c), r in texts]
        name = os.path.basename(cfg.path)
        train, val = _split(examples, cfg.val_fraction)
        super().__init__(train, val, tokenizer, name,
                         f"{len(examples):,} preference pairs from {name}, {len(val)} held out, "
                         f"{cfg.tokenizer} tokenizer ({tokenizer.vocab_size} symbols)", synthetic=False)


# ---------------------------------------------------------------------------- synthetic sets

# each task's prompt "abcd>" becomes the instruction "Reverse: abcd", its answer "dcba." the response "dcba"
INSTRUCTIONS = {"copy": "Copy", "reverse": "Reverse", "sort": "Sort", "modadd": "Add mod 97", "recall": "Recall"}
TRAIN_EXAMPLES = 4096  # synthetic training examples drawn once (more than a short fine-tune sees twice)


def _instruction_tokenizer(cfg: DataConfig):
    """Byte tokens when asked for (so a byte-tokenized model can be fine-tuned), else characters:
    the task's alphabet, its instruction and the chat template."""
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    instruction, _ = render_pair(INSTRUCTIONS[cfg.task] + ": ", "")
    return CharTokenizer(TASKS[cfg.task].alphabet + instruction + END)


def _instruction(task: str, prompt: str, answer: str) -> tuple[str, str]:
    return f"{INSTRUCTIONS[task]}: {prompt.rstrip('>=')}", answer.removesuffix(".")


def corrupt(answer: str, generator: torch.Generator) -> str:
    """``answer`` with one letter or digit changed to another of its kind: a wrong answer."""
    i = int(torch.randint(len(answer), (1,), generator=generator))
    kind = DIGITS if answer[i] in DIGITS else LETTERS
    others = kind.replace(answer[i], "")
    return answer[:i] + others[int(torch.randint(len(others), (1,), generator=generator))] + answer[i + 1 :]


def _synthetic_texts(cfg: DataConfig):
    """(train, val) lists of (instruction, answer) text from the task's own held-out split."""
    from .datasets import SyntheticData  # data imports this module

    base = SyntheticData(cfg)
    decode = base.tokenizer.decode
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    prompts, answers = base.pairs("train", TRAIN_EXAMPLES, generator)
    val = [_instruction(cfg.task, decode(p.tolist()), decode(a.tolist()))
           for p, a in zip(base.val_prompts, base.val_answers)]
    train = [_instruction(cfg.task, decode(p.tolist()), decode(a.tolist())) for p, a in zip(prompts, answers)]
    return base, train, val, generator


class SyntheticChat(ChatData):
    """A synthetic task as instructions: "Reverse: abcd" -> "dcba"; scored by exact match."""

    def __init__(self, cfg: DataConfig):
        base, train, val, _ = _synthetic_texts(cfg)
        tokenizer = _instruction_tokenizer(cfg)

        def encode(pairs):
            return [tuple(tokenizer.encode(t) for t in render_pair(p, r)) for p, r in pairs]

        example = "".join(render_pair(*val[0]))
        super().__init__(encode(train), encode(val), tokenizer, f"{base.name} as instructions",
                         f"synthetic {cfg.task} instructions for SFT, e.g. {example!r}: {len(train):,} training and "
                         f"{len(val)} held-out examples, {tokenizer.vocab_size} symbols", synthetic=True)


class SyntheticPreference(PreferenceData):
    """A synthetic task's preference pairs: the right answer chosen over one with an item changed."""

    def __init__(self, cfg: DataConfig):
        base, train, val, generator = _synthetic_texts(cfg)
        tokenizer = _instruction_tokenizer(cfg)

        def encode(pairs):
            out = []
            for p, r in pairs:
                prompt, chosen = render_pair(p, r)
                rejected = render_pair(p, corrupt(r, generator))[1]
                out.append((tokenizer.encode(prompt), tokenizer.encode(chosen), tokenizer.encode(rejected)))
            return out

        p, r = val[0]
        super().__init__(encode(train), encode(val), tokenizer, f"{base.name} preferences",
                         f"synthetic {cfg.task} preference pairs for DPO, e.g. {p!r}: {r!r} over "
                         f"{corrupt(r, torch.Generator().manual_seed(0))!r}; {len(train):,} training and "
                         f"{len(val)} held-out pairs, {tokenizer.vocab_size} symbols", synthetic=True)


# the data each fine-tuning objective reads, by DataConfig.source
CHAT_SOURCES = {
    "sft": {"synthetic": SyntheticChat, "jsonl": ChatFile},
    "dpo": {"synthetic": SyntheticPreference, "jsonl": PreferenceFile},
}
