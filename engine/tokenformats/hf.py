"""The tokenization lab's Hugging Face side: ``HFLabTokenizer`` wraps a ``tokenizers.Tokenizer``,
and ``train_hf`` builds one per kind from the library's parts (normalizer, pre-tokenizer,
model, decoder) and trains it:

* "bpe": GPT-2's byte-level BPE: bytes mapped to printable characters ('Ġ' is a space), 256 of
  them in the vocabulary from the start;
* "bpe_byte_fallback": Llama's layout: BPE over characters, spaces as '▁', <0x00>..<0xFF> as
  ordinary vocabulary entries that the model falls back to for characters it does not know;
* "unigram", "wordpiece": the Unigram and WordPiece models and trainers;
* "char", "byte": a BPE model without merges over the corpus' characters / the 256 bytes.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterator

from .models import (
    BYTE_PIECE,
    BYTE_TO_UNICODE,
    UNICODE_TO_BYTE,
    Encoding,
    LabTokenizer,
    _display_bytes,
    _uses,
    char_groups,
    check_text,
    visible,
)

UNK = {"wordpiece": "[UNK]"}  # the other kinds use "<unk>"
CHUNK_CHARS = 1 << 16  # training text is fed in batches of lines this long, to report progress


class HFLabTokenizer(LabTokenizer):
    """A ``tokenizers.Tokenizer``; encodes without the post-processor's added tokens ([CLS] ...)."""

    def __init__(self, tokenizer, kind: str, settings: dict | None = None):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.kind = kind
        self.settings = dict(settings or {})
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        spec = json.loads(tokenizer.to_str())
        self._spec = None
        self.model_type = spec["model"]["type"]
        self.byte_level = _uses(spec.get("pre_tokenizer"), "ByteLevel") or _uses(spec.get("decoder"), "ByteLevel")
        self.has_byte_fallback = bool(spec["model"].get("byte_fallback"))
        self.prefix = spec["model"].get("continuing_subword_prefix") or ""
        self.unk_id = None
        unk = spec["model"].get("unk_token")
        if unk is not None:
            self.unk_id = tokenizer.token_to_id(unk)
        elif spec["model"].get("unk_id") is not None:  # Unigram
            self.unk_id = spec["model"]["unk_id"]
        self.special_ids = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        self._merges = None
        if self.model_type == "BPE":
            self._merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]

    def _display(self, token: str, tid: int) -> tuple[str, bool]:
        if tid in self.special_ids:
            return token, False
        m = BYTE_PIECE.match(token)
        if m and self.has_byte_fallback:
            b = int(m.group(1), 16)
            return (visible(chr(b)) if b < 0x80 else f"<{b:02X}>"), True
        if self.byte_level:
            try:
                return _display_bytes(bytes(UNICODE_TO_BYTE[c] for c in token)), False
            except KeyError:
                pass
        token = token.replace("▁", " ")  # Metaspace's, or a Replace normalizer's (older Llama files)
        if self.prefix and token.startswith(self.prefix):
            token = token[len(self.prefix):]
        return visible(token), False

    def encode(self, text: str) -> Encoding:
        check_text(text)
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        display, fallback = [], []
        for tok, tid in zip(enc.tokens, enc.ids):
            d, fb = self._display(tok, tid)
            display.append(d)
            fallback.append(fb)
        offsets = absorb_marks(text, [tuple(o) for o in enc.offsets])
        return Encoding(ids=list(enc.ids), tokens=list(enc.tokens), offsets=offsets, display=display,
                        byte_fallback=fallback, unk=[i == self.unk_id for i in enc.ids],
                        char_group=char_groups(offsets))

    def encode_ids(self, text: str) -> list[int]:
        check_text(text)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch_ids(self, texts: list[str]) -> list[list[int]]:
        for t in texts:
            check_text(t)
        fast = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)  # no offsets: faster
        return [e.ids for e in fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def to_bytes(self) -> tuple[bytes, str]:
        return self.tokenizer.to_str().encode("utf-8"), "tokenizer.json"

    def merges(self) -> list[tuple[str, str]] | None:
        return list(self._merges) if self._merges is not None else None

    def id_to_token(self, i: int) -> str | None:
        return self.tokenizer.id_to_token(i)

    def with_merges(self, n: int) -> HFLabTokenizer:
        """The same tokenizer knowing only its first ``n`` merges (for merge replay)."""
        import tokenizers

        if self._spec is None:
            self._spec = json.loads(self.tokenizer.to_str())  # kept: a replay asks for several n
        spec = {**self._spec, "model": {**self._spec["model"], "dropout": None}}
        spec["model"]["merges"] = spec["model"]["merges"][:n]
        return HFLabTokenizer(tokenizers.Tokenizer.from_str(json.dumps(spec)), self.kind, self.settings)


# ---------------------------------------------------------------------------- building blocks


def absorb_marks(text: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Extend each span over the combining marks right after it that no token covers: NFC/NFKC
    compose 'E' + U+0301 into 'É', and the tokenizers library aligns the result with the 'E' only."""
    out = []
    for i, (s, e) in enumerate(offsets):
        limit = offsets[i + 1][0] if i + 1 < len(offsets) else len(text)
        while e < limit and unicodedata.category(text[e]).startswith("M"):
            e += 1
        out.append((s, e))
    return out


def _normalizer(normalization: str, lowercase: bool):
    from tokenizers import normalizers

    parts = {"none": [], "nfc": [normalizers.NFC()], "nfkc": [normalizers.NFKC()]}[normalization]
    if lowercase:
        parts.append(normalizers.Lowercase())
    return normalizers.Sequence(parts) if parts else None


def _metaspace(pre_tokenizer: str):
    from tokenizers import pre_tokenizers as pt

    # no '▁' prepended to the text: Llama's "first" scheme loses a leading space on decoding
    meta = pt.Metaspace(replacement="▁", prepend_scheme="never", split=pre_tokenizer != "none")
    if pre_tokenizer == "whitespace_digits":
        return pt.Sequence([meta, pt.Digits(individual_digits=True)])
    return meta


def _byte_level_pre(pre_tokenizer: str):
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    if pre_tokenizer == "byte_level":  # GPT-2's regex: words with their leading space, numbers, punctuation
        return pt.ByteLevel(add_prefix_space=False, use_regex=True)
    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre_tokenizer == "none":
        return byte_level
    words = pt.Split(Regex(r" ?[^\s]+|\s+"), behavior="isolated")  # a word keeps its leading space
    if pre_tokenizer == "whitespace_digits":
        return pt.Sequence([words, pt.Digits(individual_digits=True), byte_level])
    return pt.Sequence([words, byte_level])


def _wordpiece_pre(pre_tokenizer: str):
    from tokenizers import pre_tokenizers as pt

    if pre_tokenizer == "whitespace":
        return pt.Whitespace()
    if pre_tokenizer == "whitespace_digits":
        return pt.Sequence([pt.Whitespace(), pt.Digits(individual_digits=True)])
    return None


def _lines(texts: list[str], progress, lo: float, hi: float) -> Iterator[list[str]]:
    """Batches of lines (newlines kept) of about ``CHUNK_CHARS``, reporting progress lo..hi."""
    total = sum(map(len, texts)) or 1
    done = 0
    for text in texts:
        for start in range(0, len(text), CHUNK_CHARS):
            end = text.find("\n", start + CHUNK_CHARS)
            end = len(text) if end < 0 else end + 1
            if end <= start:
                continue
            yield text[start:end].splitlines(keepends=True)
            done += end - start
            if progress:
                progress(lo + (hi - lo) * min(1.0, done / total))


def _too_small(vocab_size: int, need: int, what: str) -> ValueError:
    return ValueError(f"vocab_size ({vocab_size}) is smaller than the {what} ({need}); raise vocab_size to ≥ {need}")


def _alphabet(texts: list[str], normalizer) -> Counter:
    counts = Counter()
    for text in texts:
        for start in range(0, len(text), CHUNK_CHARS):
            chunk = text[start:start + CHUNK_CHARS]
            counts.update(normalizer.normalize_str(chunk) if normalizer else chunk)
    return counts


def train_hf(kind, texts, vocab_size, normalization, lowercase, pre_tokenizer, specials, settings, progress):
    from tokenizers import Tokenizer, decoders, models, trainers
    from tokenizers import pre_tokenizers as pt

    normalizer = _normalizer(normalization, lowercase)
    unk = UNK.get(kind, "<unk>")
    if kind in ("byte", "char"):
        if kind == "byte":
            tok = Tokenizer(models.BPE(vocab={c: b for b, c in BYTE_TO_UNICODE.items()}, merges=[]))
            tok.pre_tokenizer = pt.ByteLevel(add_prefix_space=False, use_regex=False)
            tok.decoder = decoders.ByteLevel()
        else:
            chars = sorted(_alphabet(texts, normalizer))
            need = len(chars) + 1 + len(specials)
            if vocab_size < need:
                raise _too_small(vocab_size, need, f"{len(chars)} distinct characters plus <unk> and the special tokens")
            vocab = {unk: 0, **{c: i + 1 for i, c in enumerate(chars)}}
            tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
            tok.decoder = decoders.Fuse()
        tok.normalizer = normalizer
        if specials:
            tok.add_special_tokens(specials)
        settings["vocab_size"] = tok.get_vocab_size()
        if progress:
            progress(0.9)
        return HFLabTokenizer(tok, kind, settings)

    if kind == "bpe":
        need = 256 + len(specials)
        if vocab_size < need:
            raise _too_small(vocab_size, need, "256 byte symbols of byte-level BPE plus the special tokens")
        model = models.BPE()
        pre, decoder = _byte_level_pre(pre_tokenizer), decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pt.ByteLevel.alphabet())
    elif kind == "bpe_byte_fallback":
        need = 256 + 1 + len(specials) + 1
        if vocab_size < need:
            raise _too_small(vocab_size, need, "256 byte-fallback tokens, <unk>, the special tokens and one character")
        model = models.BPE(unk_token=unk)
        pre = _metaspace(pre_tokenizer)
        decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        # the bytes are added after training; rare characters beyond the budget fall back to them
        budget = vocab_size - 256
        # characters get at most 3/4 of the rest, so merges have room even for a many-script corpus
        trainer = trainers.BpeTrainer(vocab_size=budget, special_tokens=[unk, *specials], show_progress=False,
                                      limit_alphabet=max(1, (budget - 1 - len(specials)) * 3 // 4))
    elif kind == "unigram":
        n_chars = len(_alphabet(texts, normalizer))
        need = n_chars + 1 + len(specials) + (1 if pre_tokenizer != "none" else 0)
        if vocab_size < need:
            raise _too_small(vocab_size, need, f"{n_chars} distinct characters plus '▁', <unk> and the special tokens")
        model, pre = models.Unigram(), _metaspace(pre_tokenizer)
        decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[unk, *specials], unk_token=unk,
                                          show_progress=False)
    else:  # wordpiece
        # CJK runs have no spaces, so "words" get long: BERT cuts them per character, here they stay whole
        model = models.WordPiece(unk_token=unk, max_input_chars_per_word=1000)
        pre, decoder = _wordpiece_pre(pre_tokenizer), decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[unk, *specials],
                                            show_progress=False)
    tok = Tokenizer(model)
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre, decoder
    tok.train_from_iterator(_lines(texts, progress, 0.05, 0.5), trainer=trainer)
    if progress:
        progress(0.95)
    if kind == "bpe_byte_fallback":
        tok = _add_byte_fallback(tok, unk, specials)
    size = tok.get_vocab_size()
    if size > vocab_size:  # the trainer kept the whole alphabet: it did not fit
        raise _too_small(vocab_size, size, f"alphabet {kind} needs for this corpus")
    settings["vocab_size"] = size
    return HFLabTokenizer(tok, kind, settings)


def _add_byte_fallback(tok, unk: str, specials: list[str]):
    """Llama's layout: <unk>, the specials, <0x00>..<0xFF>, then the learned pieces, as plain vocabulary."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    trained = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    head = [unk, *specials]
    pieces = head + [f"<0x{b:02X}>" for b in range(256)] + [p for p, _ in trained if p not in head]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    spec["model"].update(vocab=vocab, byte_fallback=True, unk_token=unk, fuse_unk=True)
    for added in spec["added_tokens"]:
        added["id"] = vocab[added["content"]]
    return Tokenizer.from_str(json.dumps(spec))
