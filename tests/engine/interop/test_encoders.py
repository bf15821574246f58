"""engine.interop.encoders: our encoder and encoder-decoder give transformers' BERT and T5 outputs
with the same weights (random weights, float32, |diff| ≤ 1e-4), both ways, with equal parameter
counts. The mappings go through ``interop``'s ``to_transformers``/``from_transformers`` as
entries of ``interop.MAPPINGS``."""

import os

import pytest
import torch

from engine import ModelConfig, build_model, interop
from engine.interop.encoders import T5, Bert

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only; nothing is downloaded

ATOL = 1e-4
BERT = dict(family="encoder", position="learned", norm="layernorm", norm_placement="post", ffn="gelu_exact",
            bias=True, n_token_type=2)
T5_ = dict(family="encoder_decoder", position="t5_relative", norm="rmsnorm", norm_placement="pre", bias=False,
           ffn="relu", norm_eps=1e-6)
CASES = {
    "bert": [
        dict(BERT, n_layer=2, n_head=3, n_embd=24, vocab_size=37, block_size=20, ffn_hidden=37, norm_eps=1e-12),
        dict(BERT, n_layer=1, n_head=4, n_embd=32, vocab_size=50, block_size=12, tie_embeddings=False, n_token_type=1),
    ],
    "t5": [
        dict(T5_, n_layer=2, n_head=4, n_embd=32, vocab_size=37, block_size=16, ffn_hidden=40,
             relative_attention_num_buckets=8, relative_attention_max_distance=12),
        dict(T5_, n_layer=1, n_decoder_layer=2, n_head=5, n_embd=20, vocab_size=51, block_size=16, ffn="geglu",
             ffn_hidden=33),
        # T5's d_kv need not be d_model / num_heads (T5-v1.1 XL: 32 heads of 64 in 2048): our head_dim
        dict(T5_, n_layer=1, n_head=3, n_embd=20, head_dim=8, vocab_size=37, block_size=16, ffn_hidden=24),
    ],
}
HF_CONFIGS = {
    "bert": [dict(vocab_size=41, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=35,
                  max_position_embeddings=24, type_vocab_size=2, layer_norm_eps=1e-12)],
    "t5": [dict(vocab_size=41, d_model=24, d_kv=6, num_heads=4, d_ff=35, num_layers=2, num_decoder_layers=1,
                feed_forward_proj=ffn, tie_word_embeddings=tie, relative_attention_num_buckets=16,
                relative_attention_max_distance=20)
           for ffn, tie in [("relu", True), ("gated-gelu", False)]]
          + [dict(vocab_size=41, d_model=24, d_kv=10, num_heads=3, d_ff=35, num_layers=1, feed_forward_proj="relu",
                  tie_word_embeddings=True, relative_attention_num_buckets=16, relative_attention_max_distance=20)],
}
HF_CLASSES = {"bert": "BertForMaskedLM", "t5": "T5ForConditionalGeneration"}


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    # until interop.MAPPINGS lists them itself
    monkeypatch.setitem(interop.MAPPINGS, "bert", Bert)
    monkeypatch.setitem(interop.MAPPINGS, "t5", T5)


def _inputs(model_type, vocab):
    g = torch.Generator().manual_seed(1)
    if model_type == "bert":
        return (torch.randint(vocab, (2, 11), generator=g),)
    return torch.randint(vocab, (2, 13), generator=g), torch.randint(vocab, (2, 7), generator=g)


def _ours(model, inputs):
    return model(*inputs)[0]


def _theirs(hf, inputs):
    if len(inputs) == 1:
        return hf(input_ids=inputs[0]).logits
    return hf(input_ids=inputs[0], decoder_input_ids=inputs[1]).logits


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _randomise(model):
    # norms start at 1 and biases at 0: give every tensor random values so a mix-up shows
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


CASE_IDS = [(t, i) for t, cases in CASES.items() for i in range(len(cases))]


@pytest.mark.parametrize("model_type,i", CASE_IDS)
def test_export_gives_the_same_outputs(model_type, i):
    cfg = ModelConfig(**CASES[model_type][i])
    cfg.validate()
    ours = _randomise(build_model(cfg)).eval()
    hf = interop.to_transformers(ours, model_type)
    assert type(hf).__name__ == HF_CLASSES[model_type]
    # transformers 5 unties BERT's two names for the output bias along with an untied head
    extra = cfg.vocab_size if model_type == "bert" and not cfg.tie_embeddings else 0
    assert _count(hf) == _count(ours) + extra
    inputs = _inputs(model_type, cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(_theirs(hf, inputs), _ours(ours, inputs), atol=ATOL, rtol=0)
        back = interop.from_transformers(hf)
        torch.testing.assert_close(_ours(back, inputs), _ours(ours, inputs), atol=ATOL, rtol=0)
    assert _count(back) == _count(ours)


@pytest.mark.parametrize("model_type,i", [(t, i) for t, c in HF_CONFIGS.items() for i in range(len(c))])
def test_import_gives_the_same_outputs(model_type, i):
    kw = HF_CONFIGS[model_type][i]
    cls = getattr(transformers, HF_CLASSES[model_type])
    hf = _randomise(cls(cls.config_class(**kw))).eval()
    ours = interop.from_transformers(hf)
    inputs = _inputs(model_type, kw["vocab_size"])
    with torch.no_grad():
        torch.testing.assert_close(_ours(ours, inputs), _theirs(hf, inputs), atol=ATOL, rtol=0)
    # transformers 5 ties T5's head to the embedding even when told not to; ours then holds a copy
    extra = kw["vocab_size"] * kw["d_model"] if model_type == "t5" and not kw["tie_word_embeddings"] else 0
    assert _count(ours) == _count(hf) + extra


def test_bert_hidden_states_match_bert_model():
    hf = _randomise(transformers.BertForMaskedLM(transformers.BertConfig(**HF_CONFIGS["bert"][0]))).eval()
    ours = interop.from_transformers(hf)
    idx = _inputs("bert", 41)[0]
    with torch.no_grad():
        torch.testing.assert_close(ours.hidden_states(idx), hf.bert(idx).last_hidden_state, atol=ATOL, rtol=0)


def test_load_bert_body_from_a_bert_model_state_dict():
    from engine.interop.encoders import load_bert_body

    hf = _randomise(transformers.BertModel(transformers.BertConfig(**HF_CONFIGS["bert"][0]))).eval()
    cfg = ModelConfig(**Bert.engine_config(hf.config))
    ours = build_model(cfg).eval()
    load_bert_body(ours, hf.state_dict())  # pooler and all: it is ignored
    idx = _inputs("bert", 41)[0]
    with torch.no_grad():
        torch.testing.assert_close(ours.hidden_states(idx), hf(idx).last_hidden_state, atol=ATOL, rtol=0)
    with pytest.raises(KeyError, match="word_embeddings"):
        load_bert_body(ours, {})


@pytest.mark.parametrize("model_type,overrides,needle", [
    ("bert", {"norm_placement": "pre"}, "norm_placement='pre'"),
    ("bert", {"n_token_type": 0}, "n_token_type=0"),
    ("bert", {"family": "decoder", "n_token_type": 0}, "family='decoder'"),
    ("t5", {"tie_embeddings": False}, "always ties"),
    ("t5", {"position": "rope"}, "position='rope'"),
    ("bert", {"n_head": 4, "head_dim": 8}, "head_dim=8"),
])
def test_configs_outside_the_architecture_are_refused(model_type, overrides, needle):
    cfg = ModelConfig(**{**CASES[model_type][0], **overrides})
    with pytest.raises(ValueError, match="no transformers equivalent") as e:
        interop.to_transformers(build_model(cfg), model_type)
    assert needle in str(e.value)


def test_unsupported_hf_settings_are_named():
    with pytest.raises(ValueError, match="hidden_act"):
        Bert.engine_config(transformers.BertConfig(hidden_act="relu"))
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5.engine_config(transformers.T5Config(feed_forward_proj="gated-silu"))
