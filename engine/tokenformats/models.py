"""The tokenization lab's tokenizer objects: one ``LabTokenizer`` interface over a Hugging Face
``tokenizers.Tokenizer`` (``HFLabTokenizer``), a SentencePiece model (``SPLabTokenizer``) and the
code-point tokenizer (``CodepointTokenizer``), each encoding to an ``Encoding`` whose offsets are
character offsets into the text given, whatever the library counts in.

Offsets rule: ``text[start:end]`` is exactly the characters a token's bytes belong to. A
character whose UTF-8 bytes are split over several tokens (byte-level BPE, byte fallback) is
covered by each of them, so their spans overlap; ``char_group`` gives such tokens one shared
number. Normalization (NFKC, lowercase) changes the text a model sees, but offsets stay in the
original text: the covered slice normalizes to what the token holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece / Llama byte-fallback pieces


def check_text(text: str) -> bytes:
    """``text`` as UTF-8; ``ValueError`` for the lone surrogates a Python str can hold."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text is not valid Unicode: lone surrogate {text[e.start]!r} at index {e.start}") from None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet: ' ' is 'Ġ')."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_TO_UNICODE = _bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


def visible(s: str) -> str:
    """Whitespace a reader can see: newline '↵', tab '→', carriage return '␍'."""
    return s.replace("\r", "␍").replace("\n", "↵").replace("\t", "→")


def _display_bytes(raw: bytes) -> str:
    """Bytes as text, where a cut multi-byte character shows as '<E2>' per byte."""
    out, i = [], 0
    while i < len(raw):
        for j in range(min(len(raw), i + 4), i, -1):  # longest valid UTF-8 prefix from i
            try:
                out.append(raw[i:j].decode("utf-8"))
                i = j
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append(f"<{raw[i]:02X}>")
            i += 1
    return visible("".join(out))


@dataclass
class Encoding:
    ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # raw pieces: 'Ġthe', '▁the', '##ing', '<0xE2>'
    offsets: list[tuple[int, int]] = field(default_factory=list)  # character spans of the text given
    display: list[str] = field(default_factory=list)  # readable: 'Ġthe' -> ' the', '##ing' -> 'ing'
    byte_fallback: list[bool] = field(default_factory=list)
    unk: list[bool] = field(default_factory=list)
    char_group: list[int] = field(default_factory=list)  # tokens sharing one cut character share a number

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict:
        return {"ids": self.ids, "tokens": self.tokens, "offsets": [list(o) for o in self.offsets],
                "display": self.display, "byte_fallback": self.byte_fallback, "unk": self.unk,
                "char_group": self.char_group}


def char_groups(offsets: list[tuple[int, int]]) -> list[int]:
    """Consecutive tokens with overlapping spans (pieces of one character) share a group number."""
    groups, g, end = [], -1, -1
    for s, e in offsets:
        if not (s < end and e > s):  # no overlap with the previous token: a new group
            g += 1
        groups.append(g)
        end = max(end, e) if s < end else e
    return groups


class LabTokenizer:
    """What every lab tokenizer offers; ``kind`` is a key of ``tokenlab.KINDS``."""

    kind: str
    vocab_size: int
    settings: dict

    def encode(self, text: str) -> Encoding:
        raise NotImplementedError

    def encode_ids(self, text: str) -> list[int]:
        return self.encode(text).ids

    def encode_batch_ids(self, texts: list[str]) -> list[list[int]]:
        return [self.encode_ids(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def to_bytes(self) -> tuple[bytes, str]:
        raise NotImplementedError

    def merges(self) -> list[tuple[str, str]] | None:
        return None

    def id_to_token(self, i: int) -> str | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} vocab_size={self.vocab_size}>"


def _uses(component: dict | None, type_name: str) -> bool:
    """Whether a tokenizer.json component (possibly a Sequence) contains ``type_name``."""
    if not component:
        return False
    if component.get("type") == type_name:
        return True
    return any(_uses(c, type_name) for key in ("pretokenizers", "decoders", "normalizers")
               for c in component.get(key) or [])


# ---------------------------------------------------------------------------- code points


class CodepointTokenizer(LabTokenizer):
    """One token per Unicode code point, its id the code point: nothing to train, nothing unknown."""

    kind = "char"
    vocab_size = 0x110000

    def __init__(self):
        self.settings = {"normalization": "none", "lowercase": False, "builtin": "char"}

    def encode(self, text: str) -> Encoding:
        check_text(text)
        n = len(text)
        return Encoding(ids=[ord(c) for c in text], tokens=list(text), offsets=[(i, i + 1) for i in range(n)],
                        display=[visible(c) for c in text], byte_fallback=[False] * n, unk=[False] * n,
                        char_group=list(range(n)))

    def encode_ids(self, text: str) -> list[int]:
        check_text(text)
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))

    def to_bytes(self) -> tuple[bytes, str]:
        return json.dumps({"tokenlab": "codepoint"}).encode(), "tokenizer.json"

    def id_to_token(self, i: int) -> str | None:
        return chr(i) if 0 <= i < self.vocab_size else None


# ---------------------------------------------------------------------------- loading


def load(data: bytes, filename: str = "tokenizer.json") -> LabTokenizer:
    """A tokenizer from a tokenizer.json (Hugging Face) or a SentencePiece ``.model``."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ValueError(f"{filename}: the file is empty")
    data = bytes(data)
    if data.lstrip()[:1] == b"{":
        try:
            spec = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{filename}: not a valid tokenizer.json ({e})") from None
        if isinstance(spec, dict) and spec.get("tokenlab") == "codepoint":
            return CodepointTokenizer()
        if not isinstance(spec, dict) or "model" not in spec:
            raise ValueError(f"{filename}: not a tokenizer.json (no 'model' entry)")
        import tokenizers

        from .hf import HFLabTokenizer

        try:
            tok = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # the Rust side raises plain Exceptions
            raise ValueError(f"{filename}: not a valid tokenizer.json ({e})") from None
        return HFLabTokenizer(tok, guess_kind(spec), {"loaded_from": filename})
    from .spm import SPLabTokenizer

    try:
        tok = SPLabTokenizer(data)
    except Exception as e:
        raise ValueError(f"{filename}: neither a tokenizer.json nor a SentencePiece model ({e})") from None
    tok.settings = {"loaded_from": filename}
    return tok


def guess_kind(spec: dict) -> str:
    """The lab kind a tokenizer.json corresponds to."""
    model = spec["model"]
    if model["type"] == "WordPiece":
        return "wordpiece"
    if model["type"] == "Unigram":
        return "unigram"
    if model["type"] == "BPE":
        if model.get("byte_fallback"):
            return "bpe_byte_fallback"
        if not model.get("merges") and _uses(spec.get("pre_tokenizer"), "ByteLevel"):
            return "byte"
        if not model.get("merges"):
            return "char"
        return "bpe"
    return model["type"].lower()
