"""SentencePiece training for the tokenization lab: BPE or Unigram with byte fallback, spaces
kept as '▁' and no whitespace collapsing, so decoding gives the text back. NFKC uses
SentencePiece's own rule; NFC and lowercasing become a normalization table built from
``unicodedata`` (SentencePiece applies such tables by longest match, which composes every
precomposed character from its canonical decomposition: NFC in all but rare mark orders)."""

from __future__ import annotations

import functools
import io
import os
import tempfile
import unicodedata
from collections import Counter

from .models import BYTE_PIECE, Encoding, LabTokenizer, char_groups, check_text, visible


@functools.lru_cache(maxsize=4)
def _rule_tsv(normalization: str, lowercase: bool) -> str:
    """A SentencePiece normalization table: 'source code points<TAB>target code points' lines."""
    def form(s: str) -> str:
        s = unicodedata.normalize("NFC", s) if normalization == "nfc" else s
        return s.lower() if lowercase else s

    rules = {}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        if form(c) != c:
            rules[c] = form(c)
        if normalization == "nfc":
            d = unicodedata.normalize("NFD", c)
            if d != c and unicodedata.normalize("NFC", d) == c:
                rules[d] = form(c)
    hexes = lambda s: " ".join(f"{ord(ch):X}" for ch in s)  # noqa: E731
    return "".join(f"{hexes(src)}\t{hexes(dst)}\n" for src, dst in rules.items() if dst)


class SPLabTokenizer(LabTokenizer):
    """A SentencePiece model; its byte offsets become character offsets of the input."""

    def __init__(self, model: bytes, kind: str | None = None, settings: dict | None = None):
        import sentencepiece as spm

        self.model = model
        self.sp = spm.SentencePieceProcessor(model_proto=model)
        # (reading the model type from the proto needs protobuf) a BPE model scores its pieces by
        # merge order, -0, -1, -2 ...; a unigram model by log-probabilities
        scores = [self.sp.get_score(i) for i in range(self.sp.get_piece_size()) if self.sp.is_unused(i) is False
                  and not (self.sp.is_control(i) or self.sp.is_unknown(i) or self.sp.is_byte(i))]
        is_bpe = bool(scores) and all(float(x).is_integer() for x in scores)
        self.model_type = "bpe" if is_bpe else "unigram"
        self.kind = kind or f"sentencepiece_{self.model_type}"
        self.settings = dict(settings or {})
        self.vocab_size = self.sp.get_piece_size()
        self._merges = None

    def encode(self, text: str) -> Encoding:
        check_text(text)
        # SentencePiece's Python binding gives piece offsets only through protobuf; its normalizer
        # maps each normalized character to the original one it came from, which is enough:
        # pieces are consecutive runs of the normalized text (byte pieces: of one character's bytes)
        norm, origin = self.sp.normalize(text, with_offsets=True)  # origin: len(norm) + 1 char indices
        ids = self.sp.encode(text)
        enc = Encoding()
        pos, pending = 0, b""
        for tid in ids:
            piece = self.sp.id_to_piece(tid)
            fb = self.sp.is_byte(tid)
            if fb:
                b = int(BYTE_PIECE.match(piece).group(1), 16)
                pending += bytes([b])
                span = 1
                try:
                    done = len(pending) >= 4 or bool(pending.decode("utf-8"))
                except UnicodeDecodeError:
                    done = False
                enc.display.append(visible(chr(b)) if b < 0x80 else f"<{b:02X}>")
            else:
                span = 1 if self.sp.is_unknown(tid) else len(piece)
                enc.display.append(visible(piece.replace("▁", " ")))
            a, z = pos, min(pos + span, len(norm))
            s, e = origin[min(a, len(origin) - 1)], origin[min(z, len(origin) - 1)]
            if z > a:  # a token ending inside an expansion ('ﬁ' -> 'f', 'i') covers that character
                e = max(e, origin[z - 1] + 1)
            dummy = a == 0 and z == 1 and norm[:1] == "▁" and not text[:1].isspace()  # the dummy prefix
            if e <= s and s < len(text) and not dummy:
                e = s + 1  # part of a character the normalizer expanded ('ﬁ' -> 'f', 'i')
            if not fb or done:
                pos, pending = z, b""
            enc.ids.append(tid)
            enc.tokens.append(piece)
            enc.offsets.append((int(s), int(e)))
            enc.byte_fallback.append(bool(fb))
            enc.unk.append(bool(self.sp.is_unknown(tid)))
        enc.char_group = char_groups(enc.offsets)
        return enc

    def encode_ids(self, text: str) -> list[int]:
        check_text(text)
        return self.sp.encode(text)

    def encode_batch_ids(self, texts: list[str]) -> list[list[int]]:
        for t in texts:
            check_text(t)
        return self.sp.encode(texts, num_threads=2)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(map(int, ids)))

    def to_bytes(self) -> tuple[bytes, str]:
        return self.model, "tokenizer.model"

    def id_to_token(self, i: int) -> str | None:
        return self.sp.id_to_piece(i) if 0 <= i < self.vocab_size else None

    def merges(self) -> list[tuple[str, str]] | None:
        """SentencePiece keeps no merge list, but a BPE model's pieces are in merge order: each
        piece is split into the two earlier pieces it was made from."""
        if self.model_type != "bpe":
            return None
        if self._merges is None:
            normal = [i for i in range(self.vocab_size) if not (self.sp.is_control(i) or self.sp.is_unknown(i)
                                                                 or self.sp.is_byte(i) or self.sp.is_unused(i))]
            pieces = [self.sp.id_to_piece(i) for i in normal]
            rank = {p: -1 for p in pieces if len(p) == 1}  # the alphabet comes after the merged pieces
            merges = []
            for piece in pieces:
                if len(piece) > 1:
                    splits = [(max(rank[piece[:k]], rank[piece[k:]]), piece[:k], piece[k:])
                              for k in range(1, len(piece)) if piece[:k] in rank and piece[k:] in rank]
                    if splits:
                        merges.append(min(splits)[1:])
                    rank[piece] = len(merges)
            self._merges = merges
        return list(self._merges)


def train_sentencepiece(kind, texts, vocab_size, normalization, lowercase, pre_tokenizer, specials, settings,
                        progress):
    import sentencepiece as spm

    def form(line: str) -> str:  # what SentencePiece's rule will make of it, for counting
        line = unicodedata.normalize(normalization.upper(), line) if normalization != "none" else line
        return line.lower() if lowercase else line

    # like bpe_byte_fallback's alphabet limit: keep the most frequent characters that fit beside the
    # 256 bytes, <unk>, '▁' and the specials; characters get at most 3/4 of the room; the rest become spaces in the training text (so no
    # merge spans them) and fall back to bytes when encoding. SentencePiece's own limit,
    # character_coverage, cannot go below 0.98.
    counts = Counter()
    for text in texts:
        for start in range(0, len(text), 1 << 16):
            counts.update(form(text[start:start + (1 << 16)]))
    room = vocab_size - 256 - 1 - len(specials) - 2
    if room < 1:
        raise ValueError(f"vocab_size ({vocab_size}) is smaller than the 256 byte pieces, <unk> and the special "
                         f"tokens {kind} needs; raise vocab_size to ≥ {vocab_size - room + 1}")
    budget = max(1, room * 3 // 4)  # a quarter at least is left for merged pieces
    rare = {c for c, _ in counts.most_common()[budget:]}
    squash = str.maketrans({c: " " for c in rare})
    total = sum(map(len, texts)) or 1

    def sentences():
        done = 0
        for text in texts:
            for line in text.splitlines():
                done += len(line) + 1
                line = form(line).translate(squash) if rare else line
                if line.strip():
                    yield line
                if progress and done % 65536 < len(line) + 1:
                    progress(0.05 + 0.45 * min(1.0, done / total))

    options = dict(
        model_type="bpe" if kind == "sentencepiece_bpe" else "unigram", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        split_by_whitespace=pre_tokenizer != "none", split_digits=pre_tokenizer == "whitespace_digits",
        max_sentence_length=1 << 16, hard_vocab_limit=False, num_threads=2, minloglevel=2,
    )
    if specials:
        options["user_defined_symbols"] = specials
    rule_file = None
    if normalization == "nfkc":
        options["normalization_rule_name"] = "nfkc_cf" if lowercase else "nfkc"
    elif normalization == "none" and not lowercase:
        options["normalization_rule_name"] = "identity"
    else:
        fd, rule_file = tempfile.mkstemp(suffix=".tsv")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_rule_tsv(normalization, lowercase))
        options["normalization_rule_tsv"] = rule_file
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=sentences(), model_writer=model, **options)
    except RuntimeError as e:
        msg = str(e).split("] ")[-1].strip() or repr(e)
        if "smaller than required" in msg or "Vocabulary size" in msg or "vocab_size" in msg:
            raise ValueError(f"vocab_size ({vocab_size}) is too small for {kind} on this corpus "
                             f"(it needs 256 byte pieces, <unk>, the special tokens and the characters): {msg}") from None
        raise ValueError(f"SentencePiece could not train {kind}: {msg}") from None
    finally:
        if rule_file:
            os.unlink(rule_file)
    if progress:
        progress(0.95)
    tok = SPLabTokenizer(model.getvalue(), kind, settings)
    settings["vocab_size"] = tok.vocab_size
    return tok
