"""Properties of the lab's tokenizers over arbitrary Unicode: lossless kinds give the text back,
and every kind's offsets are character spans of the text that tile it."""

import functools
import os
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import tokenlab

VOCAB = {"bpe": 400, "bpe_byte_fallback": 500, "unigram": 800, "wordpiece": 1200, "sentencepiece_bpe": 500,
         "sentencepiece_unigram": 500, "char": 2000, "byte": 300}
LOSSLESS = ["bpe", "bpe_byte_fallback", "byte", "sentencepiece_bpe", "sentencepiece_unigram"]

# any code point but lone surrogates; '▁' is left out: Metaspace and SentencePiece tokenizers write
# spaces as '▁', so a literal one decodes as a space (Llama's tokenizer does the same)
CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="▁")
TEXTS = st.one_of(
    st.text(CHARS, max_size=40),
    st.lists(st.sampled_from(["the", " ", "  ", "\n", "\t", "\x00", "😀", "👨‍👩‍👧", "é", "e\u0301", "中文", "שלום",
                              "مرحبا", "ﬁ", "Ａ", "123", "İ", "ß", "\r\n", "🇫🇷", "ก่", "x"]), max_size=12).map("".join),
)
PROPS = settings(max_examples=int(os.environ.get("TOKENLAB_EXAMPLES", 50)), deadline=None)


@functools.cache
def lab(kind: str, normalization: str = "none", lowercase: bool = False):
    return tokenlab.train(kind, tokenlab.corpus_text("multilingual"), vocab_size=VOCAB[kind],
                          normalization=normalization, lowercase=lowercase)


@pytest.mark.parametrize("kind", LOSSLESS)
@PROPS
@given(text=TEXTS)
def test_lossless_kinds_decode_what_they_encode(kind, text):
    tok = lab(kind)
    assert tok.decode(tok.encode(text).ids) == text


@PROPS
@given(text=TEXTS)
def test_builtins_round_trip(text):
    for name in ("byte", "char"):
        tok = tokenlab.builtin(name)
        assert tok.decode(tok.encode(text).ids) == text


@pytest.mark.parametrize("kind", LOSSLESS)
@PROPS
@given(text=TEXTS)
def test_lossless_offsets_tile_the_text(kind, text):
    """Spans start at 0, end at len(text), never leave a gap, and overlap only within a cut
    character (tokens of one char_group)."""
    enc = lab(kind).encode(text)
    end = 0
    for i, (s, e) in enumerate(enc.offsets):
        assert 0 <= s <= e <= len(text)
        if s < end:  # overlap: a piece of the previous token's character
            assert enc.char_group[i] == enc.char_group[i - 1]
        else:
            assert s == end, (enc.tokens, enc.offsets)
        end = max(end, e)
    assert end == len(text)


@pytest.mark.parametrize("kind, normalization, lowercase", [
    ("bpe", "nfc", False), ("bpe_byte_fallback", "nfkc", True), ("unigram", "nfc", False),
    ("wordpiece", "nfkc", True), ("sentencepiece_bpe", "nfkc", False), ("sentencepiece_unigram", "nfc", True),
    ("char", "nfkc", False),
])
@PROPS
@given(text=TEXTS)
def test_offsets_cover_what_each_token_holds(kind, normalization, lowercase, text):
    """With normalization the covered slice, normalized, contains the token's text."""
    tok = lab(kind, normalization, lowercase)
    enc = tok.encode(text)
    starts = [s for s, _ in enc.offsets]
    assert starts == sorted(starts)
    for token, display, (s, e), group, unk, fb in zip(enc.tokens, enc.display, enc.offsets, enc.char_group,
                                                       enc.unk, enc.byte_fallback):
        assert 0 <= s <= e <= len(text)
        if unk or fb or enc.char_group.count(group) > 1 or "<" in display:  # pieces of a character
            continue
        covered = text[s:e]
        if normalization != "none":
            covered = unicodedata.normalize(normalization.upper(), covered)
        covered = covered.lower() if lowercase else covered
        shown = display.replace("↵", "\n").replace("→", "\t").replace("␍", "\r")
        assert shown.strip() in covered or shown.strip() in unicodedata.normalize("NFC", covered), \
            (token, display, text[s:e])
