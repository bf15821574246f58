import pytest

from engine import TOKENIZERS, tokenlab
from engine.data.tokenizers import ByteTokenizer, CharTokenizer, FileTokenizer, tokenizer_from_dict

SAMPLE = "def f(x):\n    return x ** 2  # naïve\n"


def make(name):
    """Every entry is built from text, except "file", which is a tokenizer the lab trained and saved."""
    if name == "file":
        return FileTokenizer(tokenlab.train("bpe", SAMPLE * 4, vocab_size=300))
    return TOKENIZERS[name].from_text(SAMPLE)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_round_trip_and_bulk_encoding(name):
    tok = make(name)
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode_array(SAMPLE).tolist() == ids
    assert tok.encode("") == [] and tok.decode([]) == ""


@pytest.mark.parametrize("name", TOKENIZERS)
def test_saved_and_restored(name):
    tok = make(name)
    again = tokenizer_from_dict(tok.to_dict())
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
    assert again.encode(SAMPLE) == tok.encode(SAMPLE)


def test_char_vocabulary_is_the_sorted_characters():
    tok = CharTokenizer.from_text("banana")
    assert tok.vocab_size == 3 and tok.decode([0, 1, 2]) == "abn"


def test_char_rejects_unknown_characters_by_name():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'xz'"):
        tok.encode("axbz")
    with pytest.raises(ValueError):
        tok.encode_array("abz")


@pytest.mark.parametrize("text", ["héllo wörld", "日本語のテキスト", "emoji 🚀🧪 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "e\u0301 combining", "\x00\n\t"])
def test_byte_round_trips_any_unicode(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert tok.vocab_size == 256 and max(ids) < 256
    assert tok.decode(ids) == text


def test_byte_decode_of_a_cut_character_replaces_it():
    ids = ByteTokenizer().encode("🚀")
    assert ByteTokenizer().decode(ids[:2]) == "\ufffd"
