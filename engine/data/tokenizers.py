"""Tokenizers. Every entry is built by ``from_text(text)`` and offers ``encode(str) -> list[int]``,
``decode(list[int]) -> str``, ``vocab_size``, a fast bulk ``encode_array`` for whole corpora,
and ``to_dict()`` so a trained model can be saved with the vocabulary it was trained on.
"file" is the exception: it is read from ``DataConfig.tokenizer_file`` (a tokenizer saved by the
tokenization lab) with ``FileTokenizer.from_file``."""

from __future__ import annotations

import base64
import os
from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class CharTokenizer:
    """One token per Unicode character; the vocabulary is the sorted set of the corpus' characters."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = len(self.chars)
        # code points in sorted order, so np.searchsorted maps a whole corpus in one call
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(text)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {''.join(unknown)!r}")
        return [self.stoi[c] for c in text]

    def encode_array(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, cps)
        if len(cps) and (ids.max() >= self.vocab_size or not np.array_equal(self._codepoints[ids], cps)):
            self.encode(text)  # raises with the unknown characters named
        return ids.astype(np.int64)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        return cls(d["chars"])


class ByteTokenizer:
    """The 256 values of a UTF-8 byte: any text encodes, at ~1 token per ASCII character.
    Decoding a cut multi-byte sequence yields U+FFFD rather than failing."""

    kind = "byte"
    vocab_size = 256

    @classmethod
    def from_text(cls, text: str) -> ByteTokenizer:
        return cls()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict) -> ByteTokenizer:
        return cls()


class FileTokenizer:
    """A tokenizer saved by the tokenization lab (``engine.tokenlab``): a tokenizer.json or a
    SentencePiece .model, named by ``DataConfig.tokenizer_file``. The ids are exactly the lab's
    (``lab.encode(text).ids``); ``to_dict`` carries the file itself, so a checkpoint keeps it."""

    kind = "file"

    def __init__(self, lab):
        self.lab = lab  # an engine.tokenformats LabTokenizer
        self.vocab_size = lab.vocab_size

    @classmethod
    def from_text(cls, text: str) -> FileTokenizer:
        raise ValueError("the 'file' tokenizer is read from data.tokenizer_file, not built from the text")

    @classmethod
    def from_file(cls, path: str | None) -> FileTokenizer:
        """``ConfigError`` on "data.tokenizer_file" when the file is missing or not a tokenizer."""
        from .. import tokenformats
        from ..config.errors import ConfigError

        if not path:
            raise ConfigError({"data.tokenizer_file": "tokenizer_file is required when tokenizer is 'file'"})
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConfigError({"data.tokenizer_file": f"cannot read {path}: {e.strerror}"}) from None
        try:
            return cls(tokenformats.load(data, os.path.basename(path)))
        except ValueError as e:
            raise ConfigError({"data.tokenizer_file": str(e)}) from None

    def encode(self, text: str) -> list[int]:
        return self.lab.encode_ids(text)

    def encode_array(self, text: str) -> np.ndarray:
        # one call on the whole text: cutting it into chunks could change the tokens at the cuts
        return np.asarray(self.lab.encode_ids(text), dtype=np.int64)

    def decode(self, ids: list[int]) -> str:
        return self.lab.decode(list(ids))

    def to_dict(self) -> dict:
        data, filename = self.lab.to_bytes()
        return {"kind": self.kind, "filename": filename, "data": base64.b64encode(data).decode("ascii")}

    @classmethod
    def from_dict(cls, d: dict) -> FileTokenizer:
        from .. import tokenformats

        return cls(tokenformats.load(base64.b64decode(d["data"]), d["filename"]))


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer saved with ``to_dict()``."""
    return TOKENIZERS[d["kind"]].from_dict(d)


TOKENIZERS = {"char": CharTokenizer, "byte": ByteTokenizer, "file": FileTokenizer}
