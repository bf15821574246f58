"""engine.interop: our models and transformers' give the same logits with the same weights.

Parametrised over ``MAPPINGS``: every architecture gets several configs (odd widths, odd
vocabularies, grouped-query attention, the RoPE scalings, a sliding window, experts, a head size
``head_dim`` other than width / heads) and
three checks each: export (ours -> HF), import (random HF -> ours) and a round trip.
"""

import os

import pytest
import torch

from engine import ModelConfig, build_model
from engine.interop.mappings import MAPPINGS, from_transformers, to_transformers

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only; nothing is downloaded

GPT2 = dict(position="learned", norm="layernorm", ffn="gelu", bias=True)
LLAMA = dict(position="rope", norm="rmsnorm", ffn="swiglu", bias=False, tie_embeddings=False)
MOE = dict(LLAMA, n_expert=4, top_k=2, capacity_factor=0.0)
QWEN2 = dict(LLAMA, qkv_bias=True, norm_eps=1e-6, rope_theta=1e6)
GEMMA2 = dict(position="rope", norm="rmsnorm_offset", norm_placement="sandwich", ffn="geglu", bias=False,
              embed_scale=True, attn_softcap=50.0, final_softcap=30.0, norm_eps=1e-6)

CASES = {
    "gpt2": [
        dict(GPT2, n_layer=2, n_head=3, n_embd=48, vocab_size=101, block_size=16),
        dict(GPT2, n_layer=1, n_head=4, n_embd=32, vocab_size=50, block_size=12, ffn_mult=3.0, tie_embeddings=False),
    ],
    "llama": [
        dict(LLAMA, n_layer=2, n_head=6, n_kv_head=2, n_embd=48, vocab_size=101, block_size=16),
        dict(LLAMA, n_layer=1, n_head=4, n_embd=32, vocab_size=50, block_size=16, bias=True, tie_embeddings=True,
             rope_theta=500000.0, rope_scaling="linear", rope_factor=2.0, ffn_hidden=40, norm_eps=1e-6),
        dict(LLAMA, n_layer=2, n_head=4, n_kv_head=1, n_embd=32, vocab_size=37, block_size=16,
             rope_scaling="yarn", rope_factor=2.0, rope_original_block_size=8),
        # heads wider than the stream together (4 × 16 = 64 > 48), as Mistral-NeMo's 32 × 128 in 5120
        dict(LLAMA, n_layer=2, n_head=4, n_kv_head=2, n_embd=48, head_dim=16, vocab_size=101, block_size=16),
    ],
    "mistral": [
        dict(LLAMA, n_layer=2, n_head=6, n_kv_head=2, n_embd=48, vocab_size=101, block_size=16,
             attention="sliding", window=5),
        dict(LLAMA, n_layer=1, n_head=4, n_embd=32, vocab_size=50, block_size=12, ffn_hidden=24),
        dict(LLAMA, n_layer=2, n_head=4, n_kv_head=1, n_embd=40, head_dim=8, vocab_size=50, block_size=12,
             attention="sliding", window=5),  # narrower: 4 × 8 = 32 < 40
    ],
    "mixtral": [
        dict(MOE, n_layer=2, n_head=6, n_kv_head=2, n_embd=48, vocab_size=101, block_size=16, ffn_hidden=40),
        dict(MOE, n_layer=1, n_head=4, n_embd=32, vocab_size=50, block_size=16, n_expert=3, top_k=1,
             attention="sliding", window=6),
        # 6 heads do not divide the width 32: only an explicit head size makes them fit
        dict(MOE, n_layer=1, n_head=6, n_kv_head=3, n_embd=32, head_dim=8, vocab_size=50, block_size=16,
             ffn_hidden=24),
    ],
    "qwen2": [
        dict(QWEN2, n_layer=2, n_head=6, n_kv_head=2, n_embd=48, vocab_size=101, block_size=16, tie_embeddings=True),
        dict(QWEN2, n_layer=1, n_head=4, n_embd=32, vocab_size=50, block_size=12, ffn_hidden=24,
             attention="sliding", window=5),
        # Qwen2Config has no head_dim field, but its attention reads one when given (4 × 12 = 48 > 40)
        dict(QWEN2, n_layer=2, n_head=4, n_kv_head=2, n_embd=40, head_dim=12, vocab_size=50, block_size=12),
    ],
    "gemma2": [
        # Gemma 2 2B's shape in small: local and global layers alternating, heads wider than width / heads
        dict(GEMMA2, n_layer=3, n_head=4, n_kv_head=2, n_embd=48, head_dim=16, vocab_size=101, block_size=16,
             attention="local_global", window=5, global_every=2, ffn_hidden=40),
        # a score scale other than the head size (Gemma 2 27B: 144 with heads of 128), one global layer in 3,
        # untied, no soft-caps
        dict(GEMMA2, n_layer=3, n_head=4, n_embd=32, vocab_size=50, block_size=12, attention="local_global",
             window=4, global_every=3, query_pre_attn_scalar=12, tie_embeddings=False, attn_softcap=0.0,
             final_softcap=0.0),
        dict(GEMMA2, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, vocab_size=37, block_size=12, attention="sliding",
             window=3, attn_softcap=5.0, final_softcap=3.0),
    ],
}
# The encoder families (bert, t5) are tested in test_interop_encoders.py: they are called differently.
ENCODER_MAPPINGS = {"bert", "t5"}
assert set(CASES) == set(MAPPINGS) - ENCODER_MAPPINGS, "give every mapping test configs"


PARAMS = [pytest.param(family, kw, id=f"{family}-{i}") for family, configs in CASES.items()
          for i, kw in enumerate(configs)]


def _ours(family: str, kw: dict) -> torch.nn.Module:
    model = build_model(ModelConfig(**kw))
    _perturb(model)
    return model.eval()


def _perturb(model: torch.nn.Module) -> None:
    # random values everywhere, norm gains and biases included, so that a swapped or
    # untransposed tensor cannot hide behind an init of ones or zeros
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)


def _ids(cfg: ModelConfig) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (2, cfg.block_size))


def _hf_params(hf) -> int:
    return sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("family,kw", PARAMS)
def test_export_matches_transformers(family, kw):
    ours = _ours(family, kw)
    hf = to_transformers(ours, model_type=family)
    assert hf.config.model_type == family
    assert _hf_params(hf) == ours.num_params()
    idx = _ids(ours.config)
    with torch.no_grad():
        diff = (ours(idx)[0] - hf(idx).logits).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("family,kw", PARAMS)
def test_import_matches_transformers(family, kw):
    mapping = MAPPINGS[family]
    config_cls, model_cls = _hf_config_and_model(mapping)
    hf = model_cls(config_cls(**mapping.hf_config(ModelConfig(**kw)))).eval()
    _perturb(hf)
    ours = from_transformers(hf)
    assert ours.config.to_dict() == ModelConfig(**kw).to_dict()
    assert ours.num_params() == _hf_params(hf)
    idx = _ids(ours.config)
    with torch.no_grad():
        diff = (ours(idx)[0] - hf(idx).logits).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("family,kw", PARAMS)
def test_round_trip_keeps_config_and_weights(family, kw):
    ours = _ours(family, kw)
    back = from_transformers(to_transformers(ours, model_type=family))
    assert back.config == ours.config
    before, after = ours.state_dict(), back.state_dict()
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def _hf_config_and_model(mapping):
    model_cls = getattr(transformers, mapping.hf_class)
    return model_cls.config_class, model_cls


def test_from_transformers_names_the_supported_types():
    hf = transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
        word_embed_proj_dim=16, max_position_embeddings=16))
    with pytest.raises(ValueError, match=r"unsupported transformers model_type 'opt'; choose from \['gpt2'"):
        from_transformers(hf)


def test_to_transformers_explains_an_inexpressible_config():
    # GPT-2's Conv1D layers always carry biases, and no other mapping takes LayerNorm
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11, bias=False))
    with pytest.raises(ValueError, match=r"gpt2: bias=False \(needs True; Conv1D always has a bias\)"):
        to_transformers(model)
    with pytest.raises(ValueError, match=r"unknown model_type 'gpt3'; choose from \['gpt2', 'llama'"):
        to_transformers(model, model_type="gpt3")


def test_static_ntk_rope_has_no_transformers_equivalent():
    # transformers' "dynamic" NTK recomputes the base from the current length; ours is static
    model = build_model(ModelConfig(**LLAMA, n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11,
                                    rope_scaling="ntk", rope_factor=2.0))
    with pytest.raises(ValueError, match=r"llama: rope_scaling='ntk' \(needs \('none', 'linear', 'yarn'\)\)"):
        to_transformers(model)


def test_from_transformers_refuses_settings_we_lack():
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=11, n_positions=8, n_embd=16, n_layer=1, n_head=2, activation_function="relu",
        bos_token_id=None, eos_token_id=None))
    with pytest.raises(ValueError, match=r"GPT-2 activation 'relu' is not supported; choose from \['gelu_new'"):
        from_transformers(hf)


@pytest.mark.parametrize("family,kw", [p for p in PARAMS if p.id in ("gpt2-0", "llama-0", "llama-3", "mistral-0",
                                                                       "qwen2-0", "qwen2-1", "gemma2-0", "gemma2-1")])
def test_greedy_decoding_matches_transformers_generate(family, kw):
    ours = _ours(family, kw)
    hf = to_transformers(ours, model_type=family)
    prompt = _ids(ours.config)[:1, :4]
    with torch.no_grad():
        mine = ours.generate(prompt, 10, temperature=0, use_cache=True)
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, min_new_tokens=10,
                             do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0)
    assert torch.equal(mine, theirs)


@pytest.mark.parametrize("family,kw", [p for p in PARAMS if p.values[0] in ("qwen2", "gemma2")])
def test_qwen2_and_gemma2_logits_agree_to_1e_5(family, kw):
    """Issue 15: Qwen2's q/k/v-only biases and Gemma 2's sandwich (1 + w) norms, scaled embeddings,
    soft-caps, score scale and alternating local/global layers give transformers' logits, both ways
    (measured: Qwen2 ≤ 2e-7, Gemma 2 ≤ 3e-6, logits up to ~8)."""
    ours = _ours(family, kw)
    hf = to_transformers(ours, model_type=family)
    mapping = MAPPINGS[family]
    config_cls, model_cls = _hf_config_and_model(mapping)
    theirs = model_cls(config_cls(**mapping.hf_config(ModelConfig(**kw)))).eval()
    _perturb(theirs)
    imported = from_transformers(theirs)
    idx = _ids(ours.config)
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max().item() <= 1e-5
        assert (imported(idx)[0] - theirs(idx).logits).abs().max().item() <= 1e-5


def test_gemma2_layers_alternate_as_transformers_layer_types():
    kw = CASES["gemma2"][0]
    hf = to_transformers(_ours("gemma2", kw), model_type="gemma2")
    assert hf.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert hf.config.sliding_window == kw["window"] and hf.config.query_pre_attn_scalar == kw["head_dim"]
    ours = from_transformers(hf)
    assert [b.attn.pattern.window for b in ours.h] == [kw["window"], None, kw["window"]]


def test_qwen2_refuses_a_window_on_some_layers_only():
    from engine.interop.hf_config import config_from_hf

    d = dict(model_type="qwen2", num_hidden_layers=4, use_sliding_window=True, sliding_window=8, max_window_layers=2)
    with pytest.raises(ValueError, match=r"qwen2 layer_types .* are not supported; ours are all full or all sliding"):
        config_from_hf(d)
    assert config_from_hf({**d, "max_window_layers": 0}).attention == "sliding"
    assert config_from_hf({**d, "use_sliding_window": False}).attention == "full"


def test_llama_cannot_say_qkv_bias_alone():
    model = build_model(ModelConfig(**CASES["qwen2"][0]))
    with pytest.raises(ValueError, match=r"llama: qkv_bias=True \(needs False; attention_bias also puts one on o_proj"):
        to_transformers(model, model_type="llama")
    assert to_transformers(model).config.model_type == "qwen2"  # the first mapping that fits


def test_mixtral_export_needs_dropless_routing():
    kw = dict(CASES["mixtral"][1], capacity_factor=1.25)
    with pytest.raises(ValueError, match=r"capacity_factor=1.25 \(needs 0.0; Mixtral is dropless\)"):
        to_transformers(build_model(ModelConfig(**kw)), model_type="mixtral")


HEAD_DIM_PARAMS = [p for p in PARAMS if "head_dim" in p.values[1]]
assert {p.values[0] for p in HEAD_DIM_PARAMS} == {"llama", "mistral", "mixtral", "qwen2", "gemma2"}


@pytest.mark.parametrize("family,kw", HEAD_DIM_PARAMS)
def test_explicit_head_size_counts_as_transformers_meta_model(family, kw):
    """Issue 14, defect 7: with head_dim ≠ n_embd / n_head, q_proj is n_embd → n_head·head_dim and
    o_proj back; ``analyze`` counts what transformers builds (on the meta device: no memory)."""
    from engine.analysis import analyze

    cfg = ModelConfig(**kw)
    hf_config = transformers.AutoConfig.for_model(family, **MAPPINGS[family].hf_config(cfg))
    assert hf_config.head_dim == cfg.head_dim != cfg.n_embd // cfg.n_head
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert analyze(cfg)["params"]["total"] == _hf_params(hf) == build_model(cfg).num_params()
    q = hf.model.layers[0].self_attn.q_proj.weight
    assert tuple(q.shape) == (cfg.n_head * cfg.head_dim, cfg.n_embd)


def test_gpt2_export_refuses_an_explicit_head_size():
    kw = dict(CASES["gpt2"][0], head_dim=8)  # 3 heads of 8 in a 48 stream: GPT-2's c_attn is 48 → 3 × 48
    with pytest.raises(ValueError, match=r"head_dim=8 \(needs \(None, 16\); GPT-2's heads split the width\)"):
        to_transformers(build_model(ModelConfig(**kw)), model_type="gpt2")
