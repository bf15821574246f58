"""LoRA on the engine's Decoder through peft, on a tiny Llama-shaped model: the fused inference
paths include the adapters, an adapter saves and reloads exactly, and both exports load in
transformers (merged) and peft (adapter) with our logits."""

import dataclasses

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from engine.finetune import export, lora  # noqa: E402
from engine.finetune.config import TARGET_MODULES, LoraSettings  # noqa: E402
from engine.interop.pretrained import pretrained_config  # noqa: E402
from engine.models.families import build_model  # noqa: E402


@pytest.fixture
def tiny_llama():
    """SmolLM2's shape (RMSNorm, SwiGLU, RoPE, GQA, tied embeddings), shrunk."""
    cfg = dataclasses.replace(pretrained_config("smollm2-135m-instruct"), n_layer=2, n_embd=64, n_head=4,
                              n_kv_head=2, ffn_hidden=96, vocab_size=101, block_size=64)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def trained(model, settings=None):
    """``model`` with adapters whose B is random (as after training; B starts at zero)."""
    wrapped = lora.apply_lora(model, settings or LoraSettings(rank=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return wrapped.eval()


IDS = torch.tensor([[1, 5, 9, 33, 7, 100, 2, 64]])


def test_trainable_parameters_are_the_adapters(tiny_llama):
    total = sum(p.numel() for p in tiny_llama.parameters())
    wrapped = lora.apply_lora(tiny_llama, LoraSettings(rank=4))
    trainable, all_ = lora.trainable_parameters(wrapped)
    # per layer: r·(in + out) for q (64→64), k, v (64→32), o (64→64), gate, up (64→96), down (96→64)
    per_layer = 4 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 96))
    assert trainable == 2 * per_layer and all_ == total + trainable
    assert all("lora_" in n for n, p in wrapped.named_parameters() if p.requires_grad)


def test_smollm2_with_lora_r8_on_every_projection_trains_2_442_240_parameters():
    with torch.device("meta"):
        model = build_model(pretrained_config("smollm2-135m-instruct"))
    wrapped = lora.apply_lora(model, LoraSettings(rank=8, target_modules=list(TARGET_MODULES)))
    assert lora.trainable_parameters(wrapped) == (2_442_240, 136_957_248)


def test_inference_paths_include_the_adapters(tiny_llama):
    """Without autograd the Decoder fuses q/k/v and gate/up into one matmul; with a wrapped
    projection it must call the wrapper, or the adapters would silently vanish."""
    base_logits = tiny_llama(IDS)[0].detach()
    wrapped = trained(tiny_llama)
    with torch.enable_grad():
        graded = wrapped(IDS)[0].detach()
    with torch.no_grad():
        fused = wrapped(IDS)[0]
    assert not torch.allclose(graded, base_logits, atol=1e-4)  # the adapters change the model
    torch.testing.assert_close(fused, graded, atol=1e-5, rtol=1e-5)
    # cached generation (the lean decoding step) sees them too
    model = wrapped.get_base_model()
    assert torch.equal(model.generate(IDS, 6, temperature=0.0), model.generate(IDS, 6, temperature=0.0,
                                                                               use_cache=False))


def test_adapter_saves_and_reloads_to_identical_logits(tiny_llama, tmp_path):
    fresh = build_model(tiny_llama.config)
    fresh.load_state_dict(tiny_llama.state_dict())
    wrapped = trained(tiny_llama)
    expected = wrapped(IDS)[0]
    lora.save_adapter(wrapped, str(tmp_path), settings=LoraSettings(rank=4, alpha=8, dropout=0.0), base="tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.json", "adapter_model.safetensors"]
    reloaded = lora.load_adapter(fresh, str(tmp_path))
    assert torch.equal(reloaded(IDS)[0], expected)
    # merged into the weights: the same function, within float rounding
    torch.testing.assert_close(lora.merged(reloaded)(IDS)[0], expected, atol=1e-5, rtol=1e-5)


def test_exports_load_in_transformers_and_peft(tiny_llama, tmp_path):
    fresh = build_model(tiny_llama.config)
    fresh.load_state_dict(tiny_llama.state_dict())
    base_hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **export.MAPPINGS["llama"].hf_config(tiny_llama.config)))
    base_hf.load_state_dict({t.hf: t.to_hf(tiny_llama.state_dict()) for t in export.MAPPINGS["llama"].tensors(
        tiny_llama.config)})
    settings = LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    wrapped = trained(tiny_llama, settings)
    ours = wrapped(IDS)[0]
    saved = tmp_path / "saved"
    lora.save_adapter(wrapped, str(saved), settings=settings, base="tiny", extra={"method": "lora"})

    merged_dir = tmp_path / "merged"
    info = export.export_merged(str(saved), str(merged_dir), base_model=fresh)
    assert info["model_type"] == "llama" and "config.json" in info["files"] and "model.safetensors" in info["files"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    torch.testing.assert_close(hf(IDS).logits, ours, atol=1e-4, rtol=1e-4)

    peft_dir = tmp_path / "peft"
    info = export.export_peft(str(saved), str(peft_dir), config=tiny_llama.config)
    assert {"adapter_config.json", "adapter_model.safetensors", "base_config.json"} <= set(info["files"])
    base = transformers.LlamaForCausalLM(transformers.AutoConfig.from_pretrained(str(merged_dir)))
    base.load_state_dict(base_hf.state_dict())
    with_adapter = peft.PeftModel.from_pretrained(base, str(peft_dir)).eval()
    torch.testing.assert_close(with_adapter(input_ids=IDS).logits, ours, atol=1e-4, rtol=1e-4)
    # the config it ships builds the same base
    assert transformers.LlamaConfig.from_json_file(str(peft_dir / "base_config.json")).hidden_size == 64
