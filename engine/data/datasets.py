"""Data sources: where training tokens come from and how they are batched.

Every entry of ``DATA_SOURCES`` is built from a ``DataConfig`` and offers the same interface:
``tokenizer``, ``vocab_size``, ``describe()``, ``check_block_size(block_size)``,
``get_batch(split, batch_size, block_size, generator)``, ``eval_batches(...)``, ``sample(...)``
and ``scored`` (whether held-out accuracy is meaningful). Batches are (x, y) with y the
next-token targets, -1 where a position carries no loss.

* "text": a UTF-8 file; the last ``val_fraction`` of its tokens is held out.
* "stdlib": the local Python standard library's ``.py`` files, read at run time in sorted
  order, test directories and site-packages skipped, capped at ``STDLIB_MAX_CHARS`` so it
  loads in well under a second: a real code corpus present on every machine.
* "synthetic": examples of a task from ``tasks.TASKS``, generated on the fly; the held-out
  set is up to ``VAL_EXAMPLES`` distinct examples drawn with ``seed``, and training batches
  never contain a held-out prompt.
* "jsonl": an uploaded JSONL file of prompt/response pairs (objective "sft") or preference
  triples (objective "dpo"); see ``engine.chat``.

The fine-tuning objectives read other data from the same sources: ``load_data(cfg, objective)``
builds ``chat.CHAT_SOURCES[objective][cfg.source]`` for "sft" and "dpo" (the synthetic tasks as
instructions or as preference pairs, the JSONL file in that objective's format).
"""

from __future__ import annotations

import functools
import os
import sysconfig
import threading
from typing import TYPE_CHECKING

import torch

from ..config.errors import ConfigError
from .chat import CHAT_SOURCES, ChatFile
from .tasks import TASKS
from .tokenizers import TOKENIZERS, FileTokenizer

if TYPE_CHECKING:
    from ..config.schema import DataConfig

STDLIB_MAX_CHARS = 4_000_000
STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
VAL_EXAMPLES = 256
MAX_SAFE_INT = 2**53 - 1  # counts of possible synthetic examples are capped here so JSON/JS keeps them exact


@functools.lru_cache(maxsize=1)
def read_stdlib() -> str:
    """The first ``STDLIB_MAX_CHARS`` characters of the standard library's ``.py`` files, whole
    files in sorted path order, so every machine with the same Python reads the same corpus."""
    root = sysconfig.get_paths()["stdlib"]
    parts, size = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    source = f.read()
            except (OSError, UnicodeDecodeError):
                continue  # a handful of files are deliberately not UTF-8
            if size + len(source) > STDLIB_MAX_CHARS:
                return "\n".join(parts)
            parts.append(source)
            size += len(source) + 1
    return "\n".join(parts)


def read_text_file(path: str | None) -> str:
    if not path:
        raise ConfigError({"data.path": "path is required when source is 'text'"})
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError({"data.path": f"file not found: {path}"}) from None
    except IsADirectoryError:
        raise ConfigError({"data.path": f"{path} is a directory, not a text file"}) from None
    except OSError as e:
        raise ConfigError({"data.path": f"cannot read {path}: {e.strerror}"}) from None
    if not raw:
        raise ConfigError({"data.path": f"{path} is empty"})
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError({"data.path": f"{path} is not UTF-8 text (invalid byte at offset {e.start})"}) from None


class TextData:
    """A token stream: the last ``val_fraction`` of the tokens is the validation split."""

    scored = False

    def __init__(self, cfg: DataConfig):
        text = self.read(cfg)
        if cfg.tokenizer == "file":  # trained in the tokenization lab, saved to cfg.tokenizer_file
            self.tokenizer = FileTokenizer.from_file(cfg.tokenizer_file)
        else:
            self.tokenizer = TOKENIZERS[cfg.tokenizer].from_text(text)
        self.vocab_size = self.tokenizer.vocab_size
        ids = torch.from_numpy(self.tokenizer.encode_array(text)).to(torch.int32)  # int32 halves memory
        n_val = int(len(ids) * cfg.val_fraction)
        self.train, self.val = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
        self.n_tokens = len(ids)
        self.name = self.source_name(cfg)
        tokenizer = cfg.tokenizer
        if cfg.tokenizer == "file":
            tokenizer = f"{self.tokenizer.lab.kind} tokenizer from {os.path.basename(cfg.tokenizer_file)}"
        else:
            tokenizer += " tokenizer"
        self.description = f"{len(text):,} characters from {self.name}, {tokenizer} ({self.vocab_size} symbols)"

    def read(self, cfg: DataConfig) -> str:
        raise NotImplementedError

    def source_name(self, cfg: DataConfig) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "n_tokens": self.n_tokens,
            "train_tokens": len(self.train),
            "val_tokens": len(self.val),
            "name": self.name,
            "description": self.description,
        }

    def check_block_size(self, block_size: int) -> str | None:
        # a batch row is block_size + 1 consecutive tokens (inputs and shifted targets)
        smallest = min(("training", len(self.train)), ("validation", len(self.val)), key=lambda s: s[1])
        if smallest[1] > block_size + 1:
            return None
        fixes = "raise val_fraction or use more text" if smallest[0] == "validation" else "use more text"
        if smallest[1] >= 3:
            fixes = f"lower block_size to ≤ {smallest[1] - 2}, " + fixes
        return (
            f"block_size ({block_size}) needs more than block_size + 1 = {block_size + 1} tokens in each split, "
            f"but the {smallest[0]} split has {smallest[1]} tokens ({self.n_tokens} in all); {fixes}"
        )

    def get_batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator):
        data = self.train if split == "train" else self.val
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,) row starts
        rows = data[ix[:, None] + torch.arange(block_size + 1)].long()  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]

    def eval_batches(self, split: str, batch_size: int, block_size: int, eval_iters: int):
        # the same batches at every evaluation, so the curve shows the model changing, not the sample
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        return [self.get_batch(split, batch_size, block_size, generator) for _ in range(eval_iters)]

    def sample(self, block_size: int, sample_tokens: int):
        """A prompt from the start of a line of held-out text, to continue by sampling."""
        start = 0
        try:
            newline = self.tokenizer.encode("\n")
        except ValueError:  # a char vocabulary without newlines
            newline = []
        if newline:
            hits = (self.val[:1000] == newline[0]).nonzero()
            if len(hits) and hits[0].item() + 1 < len(self.val) - 1:
                start = hits[0].item() + 1
        length = max(1, min(block_size // 2, 64))
        prompt = self.val[start : start + length].tolist()
        return {"prompt": prompt, "expected": None, "max_new_tokens": sample_tokens, "temperature": 0.8}


class StdlibData(TextData):
    def read(self, cfg: DataConfig) -> str:
        return read_stdlib()

    def source_name(self, cfg: DataConfig) -> str:
        return "the Python standard library's .py sources"


class TextFileData(TextData):
    def read(self, cfg: DataConfig) -> str:
        return read_text_file(cfg.path)

    def source_name(self, cfg: DataConfig) -> str:
        return os.path.basename(cfg.path)


class SyntheticData:
    scored = True

    def __init__(self, cfg: DataConfig):
        self.task = TASKS[cfg.task]()
        self.n = cfg.task_length
        self.tokenizer = self.task.tokenizer
        self.vocab_size = self.tokenizer.vocab_size
        self.example_len = self.task.example_len(self.n)
        self.prompt_len = self.example_len - self.task.answer_len(self.n)
        total = self.task.count(self.n)
        n_val = min(VAL_EXAMPLES, max(1, int(cfg.val_fraction * total)))

        # draw distinct held-out examples; val_fraction ≤ 0.5 keeps this loop short
        generator = torch.Generator().manual_seed(cfg.seed)
        seen, prompts, answers = set(), [], []
        while len(prompts) < n_val:
            p, a = self.task.sample(n_val, self.n, generator)
            for pi, ai, key in zip(p, a, map(tuple, p.tolist())):
                if key not in seen and len(prompts) < n_val:
                    seen.add(key)
                    prompts.append(pi)
                    answers.append(ai)
        self.val_keys = seen
        self.val_prompts, self.val_answers = torch.stack(prompts), torch.stack(answers)  # (N, P), (N, A)

        self.n_tokens = n_val * self.example_len
        self.train_tokens = min((total - n_val) * self.example_len, MAX_SAFE_INT)
        self.name = f"{cfg.task} (task_length {self.n})" if cfg.task != "modadd" else "modadd (mod 97)"
        example = self.tokenizer.decode(torch.cat([prompts[0], answers[0]]).tolist())
        self.description = (
            f"synthetic {cfg.task} task, e.g. {example!r}: fresh examples every step, "
            f"{n_val} held out; {self.example_len} tokens per example, {self.vocab_size} symbols"
        )

    def describe(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "n_tokens": self.n_tokens,
            "train_tokens": self.train_tokens,
            "val_tokens": self.n_tokens,
            "name": self.name,
            "description": self.description,
        }

    def check_block_size(self, block_size: int) -> str | None:
        # the model reads all but the last token of an example (that one is only a target)
        if self.example_len - 1 <= block_size:
            return None
        task = self.task.__class__.__name__.lower()
        return (
            f"block_size ({block_size}) is shorter than one {task} example "
            f"({self.example_len} tokens at task_length {self.n}, which needs block_size ≥ {self.example_len - 1}); "
            f"raise block_size to ≥ {self.example_len - 1} or lower task_length"
        )

    def _rows(self, prompt: torch.Tensor, answer: torch.Tensor):
        # Rows are cut to the example's own length instead of padded to block_size: under causal
        # attention padding after the answer cannot change a single logit that carries loss.
        rows = torch.cat([prompt, answer], dim=1)  # (B, L)
        x, y = rows[:, :-1], rows[:, 1:].clone()
        y[:, : self.prompt_len - 1] = -1  # loss only where the next token is part of the answer
        return x, y

    def pairs(self, split: str, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompts (B, P), answers (B, A)): held-out ones for "val", fresh training ones otherwise."""
        if split == "val":
            ix = torch.randint(len(self.val_prompts), (batch_size,), generator=generator)
            return self.val_prompts[ix], self.val_answers[ix]
        prompt, answer = self.task.sample(batch_size, self.n, generator)
        # resample the rows that happen to be held-out examples
        held = torch.tensor([key in self.val_keys for key in map(tuple, prompt.tolist())])
        while held.any():
            p, a = self.task.sample(int(held.sum()), self.n, generator)
            prompt[held], answer[held] = p, a
            held = torch.tensor([key in self.val_keys for key in map(tuple, prompt.tolist())])
        return prompt, answer

    def eval_pairs(self, split: str, batch_size: int, eval_iters: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The whole held-out set for "val" (so accuracy is exact), else ``eval_iters`` fixed training batches."""
        if split == "val":
            n = len(self.val_prompts)
            return [(self.val_prompts[i : i + batch_size], self.val_answers[i : i + batch_size])
                    for i in range(0, n, batch_size)]
        generator = torch.Generator().manual_seed(0)
        return [self.pairs("train", batch_size, generator) for _ in range(eval_iters)]

    def get_batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator):
        return self._rows(*self.pairs(split, batch_size, generator))

    def eval_batches(self, split: str, batch_size: int, block_size: int, eval_iters: int):
        return [self._rows(p, a) for p, a in self.eval_pairs(split, batch_size, eval_iters)]

    def sample(self, block_size: int, sample_tokens: int):
        """The first held-out prompt, answered greedily: its answer is known, so show it too."""
        return {
            "prompt": self.val_prompts[0].tolist(),
            "expected": self.val_answers[0].tolist(),
            "max_new_tokens": self.val_answers.size(1),
            "temperature": 0.0,
        }


def _cache_key(cfg: DataConfig, objective: str) -> tuple:
    if cfg.source == "synthetic":
        # the instruction sets honour the byte tokenizer; the task's own alphabet is fixed
        tokenizer = cfg.tokenizer if objective in CHAT_SOURCES else None
        return (objective, cfg.source, cfg.task, cfg.task_length, cfg.val_fraction, cfg.seed, tokenizer)
    stamp = ()
    if cfg.source in ("text", "jsonl") and cfg.path:
        try:
            st = os.stat(cfg.path)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            pass
    if cfg.tokenizer == "file":  # the tokenizer file, like the text, is read again when it changes
        try:
            st = os.stat(cfg.tokenizer_file or "")
            stamp += (cfg.tokenizer_file, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp += (cfg.tokenizer_file,)
    path = cfg.path if cfg.source in ("text", "jsonl") else None
    return (objective, cfg.source, path, stamp, cfg.tokenizer, cfg.val_fraction)


_CACHE: dict[tuple, object] = {}
_CACHE_SIZE = 8
_CACHE_LOCK = threading.Lock()  # the web app calls describe_data from several threads


def data_source(source: str, objective: str = "pretrain"):
    """The class that reads ``source`` for ``objective`` (a ``TrainConfig.objective``); None
    when that objective cannot read that source."""
    if objective in CHAT_SOURCES:
        return CHAT_SOURCES[objective].get(source)
    return DATA_SOURCES[source] if source != "jsonl" else None


def load_data(cfg: DataConfig, objective: str = "pretrain"):
    """The dataset for ``cfg`` as ``objective`` reads it, cached: the key includes the file's
    mtime and size, so an edited file is read again while repeated calls (every keystroke in
    the UI) cost nothing. ``ConfigError`` on "train.objective" when the objective cannot read
    the source."""
    cls = data_source(cfg.source, objective)
    if cls is None:
        readable = [s for s in DATA_SOURCES if data_source(s, objective)]
        raise ConfigError({"train.objective": (
            f"objective {objective!r} reads prompt/response examples, which source {cfg.source!r} has none of; "
            f"choose source from {readable}" if objective in CHAT_SOURCES else
            f"source {cfg.source!r} holds examples for fine-tuning; choose objective 'sft' or 'dpo'")})
    key = _cache_key(cfg, objective)
    with _CACHE_LOCK:
        if key not in _CACHE:
            while len(_CACHE) >= _CACHE_SIZE:
                del _CACHE[next(iter(_CACHE))]  # oldest first: dicts keep insertion order
            _CACHE[key] = cls(cfg)
        return _CACHE[key]


def describe_data(cfg: DataConfig, objective: str = "pretrain") -> dict:
    """``{"vocab_size", "n_tokens", "train_tokens", "val_tokens", "name", "description"}``.
    For synthetic tasks ``n_tokens`` and ``val_tokens`` count the held-out set and
    ``train_tokens`` the distinct training examples' tokens (capped at 2**53 - 1). With an
    ``objective`` ("sft", "dpo") the data that objective reads (``engine.chat``).
    Raises ``ConfigError`` (on "data.path") when a file is missing, empty, not UTF-8 or (JSONL)
    has a line without the fields it needs, and on "train.objective" when the objective cannot
    read the source."""
    return load_data(cfg, objective).describe()


# "jsonl" is read by the fine-tuning objectives only; pretraining refuses it (``data_source``)
DATA_SOURCES = {"synthetic": SyntheticData, "stdlib": StdlibData, "text": TextFileData, "jsonl": ChatFile}
