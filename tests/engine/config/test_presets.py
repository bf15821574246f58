"""Presets of real models: each one's analytic parameter count equals the ``transformers`` model
built from the same shape (on the meta device: no memory, no download), and each survives a
round trip through its HF config dict; ``config_from_hf`` refuses what we cannot express."""


import dataclasses

import pytest
import torch

from engine import ConfigError, ModelConfig, analyze
from engine.config.presets import PRESETS, preset
from engine.interop.hf_config import config_from_hf
from engine.interop.mappings import MAPPINGS
from engine.nn.ffn import FFNS

transformers = pytest.importorskip("transformers")


def mapping_of(cfg: ModelConfig):
    """The first interop mapping that expresses ``cfg`` (every preset has one)."""
    fits = [m for m in MAPPINGS.values() if not m.problems(cfg)]
    assert fits, {k: m.problems(cfg) for k, m in MAPPINGS.items()}
    return fits[0]


def meta_numel(model_cls, hf_config) -> int:
    # parameters() yields a tied weight once, as analyze counts it
    with torch.device("meta"):
        model = model_cls(hf_config)
    return sum(p.numel() for p in model.parameters())


def hf_params(cfg: ModelConfig) -> int:
    m = mapping_of(cfg)
    model_cls = getattr(transformers, m.hf_class)  # BertForMaskedLM, T5ForConditionalGeneration, ...
    return meta_numel(model_cls, model_cls.config_class(**m.hf_config(cfg)))


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_params_equal_transformers(name):
    cfg = PRESETS[name].config
    assert analyze(cfg)["params"]["total"] == hf_params(cfg)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_is_described(name):
    p = PRESETS[name]
    assert p.description and "\n" not in p.description
    assert p.source
    assert p.config.vocab_size is not None


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_breaks_only_the_size_bounds(name):
    # the big models exceed the composer's bounds (80 layers, 8192 wide, 32K context), nothing else
    try:
        PRESETS[name].config.validate()
    except ConfigError as e:
        assert all("must be ≤" in message for message in e.errors.values()), e.errors


def test_known_figures():
    assert analyze(preset("gpt2"))["params"]["total"] == 124_439_808
    assert analyze(preset("llama-2-7b"))["params"]["total"] == 6_738_415_616
    assert analyze(preset("mixtral-8x7b"))["params"]["total"] == 46_702_792_704
    # transformers' default configs are these shapes (LlamaConfig(): LLaMA-7B; MixtralConfig(): 8x7B)
    assert meta_numel(transformers.LlamaForCausalLM, transformers.LlamaConfig()) == 6_738_415_616
    assert meta_numel(transformers.MixtralForCausalLM, transformers.MixtralConfig()) == 46_702_792_704
    assert meta_numel(transformers.GPT2LMHeadModel, transformers.GPT2Config()) == 124_439_808


def test_phi3_equals_phi3_model():
    # no interop mapping for phi3: its own config, from the model card's config.json
    hf = transformers.Phi3Config(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                                 sliding_window=2047, tie_word_embeddings=False)
    assert analyze(preset("phi-3-mini"))["params"]["total"] == meta_numel(transformers.Phi3ForCausalLM, hf)


def test_analyze_405b():
    # its speed (target ≤ 20 ms) is measured by bench/analyze_speed.py, not asserted here
    assert analyze(preset("llama-3-405b"), batch_size=1)["params"]["total"] == 405_853_388_800


def test_preset_returns_a_copy_and_names_the_choices():
    cfg = preset("gpt2")
    cfg.n_layer = 1
    assert PRESETS["gpt2"].config.n_layer == 12
    with pytest.raises(ValueError, match=r"unknown preset 'gpt-5'; choose from \['gpt2', "):
        preset("gpt-5")


# ---------------------------------------------------------------------------- config_from_hf


def spelled_alike(cfg: ModelConfig) -> dict:
    """The config with the FFN width as a number: interop writes a width as ``ffn_mult`` when
    that reproduces it (Mixtral 8x22B's 16384 = 8/3 × 6144), a preset as ``ffn_hidden``."""
    d = cfg.to_dict()
    d["ffn_hidden"], d["ffn_mult"] = FFNS[cfg.ffn].hidden_dim(cfg), None
    return d


@pytest.mark.parametrize("name", list(PRESETS))
def test_round_trip_through_hf_config(name):
    cfg = PRESETS[name].config
    m = mapping_of(cfg)
    d = getattr(transformers, m.hf_class).config_class(**m.hf_config(cfg)).to_dict()
    back = config_from_hf(d)
    assert spelled_alike(back) == spelled_alike(cfg)
    assert analyze(back)["params"]["total"] == analyze(cfg)["params"]["total"]


def llama_dict(**kw) -> dict:
    return {**transformers.LlamaConfig(**MAPPINGS["llama"].hf_config(preset("llama-2-7b"))).to_dict(), **kw}


@pytest.mark.parametrize("d, message", [
    ({"model_type": "phi3"}, r"unsupported model_type 'phi3'; choose from \['gpt2', 'llama'"),
    ({"n_layer": 2}, r"unsupported model_type None"),
    (llama_dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
     r"rope_type 'dynamic' is not supported; choose from \['default', 'linear', 'yarn'\]"),
    (llama_dict(hidden_act="gelu"), r"hidden_act 'gelu' is not supported; choose from \['silu'\]"),
    (llama_dict(attention_bias=True), r"attention_bias and mlp_bias must be equal"),
    ({"model_type": "gpt2", "activation_function": "relu"}, r"GPT-2 activation 'relu' is not supported"),
    ({"model_type": "bert", "position_embedding_type": "relative_key"},
     r"position_embedding_type 'relative_key' is not supported; choose from \['absolute'\]"),
    ({"model_type": "t5", "feed_forward_proj": "gated-silu"},
     r"feed_forward_proj 'gated-silu' is not supported; choose from \['relu', 'gated-gelu'\]"),
    ({"model_type": "mixtral", "router_jitter_noise": 0.1}, r"router_jitter_noise must be 0"),
    ({"model_type": "gpt2", "add_cross_attention": True}, r"gpt2 add_cross_attention=True is not supported"),
    ({"model_type": "bert", "is_decoder": True}, r"bert is_decoder=True is not supported"),
    ({"model_type": "gemma2", "attention_bias": True}, r"gemma2 attention_bias=True is not supported"),
    ({"model_type": "gemma2", "use_bidirectional_attention": True},
     r"gemma2 use_bidirectional_attention=True is not supported"),
    ({"model_type": "gemma2", "hidden_activation": "gelu"},
     r"gemma2 hidden_act 'gelu' is not supported; choose from \['gelu_pytorch_tanh'\]"),
    ({"model_type": "gemma2", "num_hidden_layers": 4, "layer_types": ["full_attention", "sliding_attention"] * 2},
     r"gemma2 layer_types .* are not supported; ours are all full, all sliding, or every n-th layer full"),
    ({"model_type": "qwen2", "hidden_act": "gelu"}, r"qwen2 hidden_act 'gelu' is not supported"),
])
def test_config_from_hf_refuses_what_we_cannot_express(d, message):
    with pytest.raises((ValueError, ConfigError), match=message):
        config_from_hf(d)


def test_config_from_hf_reads_a_real_config_json():
    # Mistral-7B-v0.1's config.json, as published (legacy rope_theta key, no rope_parameters)
    cfg = config_from_hf({
        "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000})
    assert cfg == preset("mistral-7b")


# Mistral-NeMo-Base-2407's config.json, as published: 32 heads of 128 in a 5120 stream
NEMO = {
    "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 128000, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.42.0.dev0", "use_cache": True, "vocab_size": 131072}


def test_config_from_hf_reads_an_explicit_head_size():
    """Issue 14, defect 7: a head size other than width / heads was refused ("ours needs head size
    = width / heads"); now it is the config's ``head_dim``, and the counts are transformers'."""
    cfg = config_from_hf(NEMO)
    assert cfg == preset("mistral-nemo-12b")
    assert (cfg.head_dim, cfg.head_size, cfg.attention_width, cfg.n_embd) == (128, 128, 4096, 5120)
    report = analyze(cfg)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**NEMO))
    assert report["params"]["total"] == sum(p.numel() for p in hf.parameters()) == 12_247_782_400
    # per layer: q_proj and o_proj 5120 × 4096, k_proj and v_proj 5120 × 1024
    assert report["params"]["attention"] == 40 * (2 * 5120 * 4096 + 2 * 5120 * 1024)
    # 2 (k and v) × 40 layers × 8 kv heads × 128 × 4 bytes (fp32, analyze's default)
    assert report["kv_cache_per_token"] == 2 * 40 * 8 * 128 * 4
    # a Llama config with heads of 64 in a 4096 stream, 16 of them: 1024 wide, no longer refused
    small = config_from_hf(llama_dict(head_dim=64, num_attention_heads=16, num_key_value_heads=16))
    assert (small.head_dim, small.attention_width) == (64, 1024)


@pytest.mark.parametrize("model_type, field, value", [
    ("llama", "hidden_size", -1), ("llama", "num_attention_heads", 0), ("gpt2", "n_embd", "64"),
    ("t5", "d_kv", 0), ("bert", "tie_word_embeddings", "yes"), ("mixtral", "num_local_experts", 2.0),
])
def test_config_from_hf_refusals_name_the_field(model_type, field, value):
    """transformers' strict dataclasses raise huggingface_hub's own errors (not ValueError), and a
    size of 0 divided by zero in the mapping: each is a ConfigError keyed by the config.json field."""
    with pytest.raises(ConfigError) as caught:
        config_from_hf({"model_type": model_type, field: value})
    assert field in caught.value.errors


def test_config_from_hf_is_part_of_the_interop_package():
    """Issue 14, defect 6: the analysis issue asked for ``engine.interop.config_from_hf``."""
    import engine
    from engine import interop

    assert interop.config_from_hf is engine.config_from_hf is config_from_hf
    hf = preset("llama-2-7b")
    cfg = interop.config_from_hf({"model_type": "llama", "hidden_size": hf.n_embd, "num_attention_heads": hf.n_head,
                                  "num_hidden_layers": hf.n_layer, "intermediate_size": hf.ffn_hidden,
                                  "vocab_size": hf.vocab_size, "max_position_embeddings": hf.block_size})
    assert analyze(cfg)["params"]["total"] == analyze(hf)["params"]["total"]


# SmolLM2's config.json fields that set the shape (HuggingFaceTB/SmolLM2-135M, -360M, -1.7B, as published);
# every other field is left to LlamaConfig's defaults, which differ from these in rope_theta (10000),
# max_position_embeddings (2048), rms_norm_eps (1e-6) and tie_word_embeddings (False)
SMOLLM2 = {
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, rope_theta=100000.0),
    "smollm2-360m": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                         intermediate_size=2560, rope_theta=100000.0),
    "smollm2-1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                         intermediate_size=8192, rope_theta=130000.0),
}


@pytest.mark.parametrize("name", list(SMOLLM2))
def test_smollm2_presets_are_the_published_configs(name):
    published = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 49152,
                 "max_position_embeddings": 8192, "tie_word_embeddings": True, "rms_norm_eps": 1e-05,
                 "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, **SMOLLM2[name]}
    assert spelled_alike(config_from_hf(published)) == spelled_alike(preset(name))
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**published))
    assert hf.lm_head.weight is hf.model.embed_tokens.weight  # tied: counted once
    assert analyze(preset(name))["params"]["total"] == sum(p.numel() for p in hf.parameters())


def test_smollm2_figures():
    # 134,515,008 is also what the pretrained SmolLM2-135M-Instruct loads into (engine.interop.pretrained)
    counts = {name: analyze(preset(name))["params"]["total"] for name in SMOLLM2}
    assert counts == {"smollm2-135m": 134_515_008, "smollm2-360m": 361_821_120, "smollm2-1.7b": 1_711_376_384}


# ---------------------------------------------------------------------------- Qwen2.5, Gemma 2 (issue 15)

# Qwen/Qwen2.5-0.5B's config.json, as published
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
    "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
    "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
    "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.40.1",
    "use_cache": True, "use_mrope": False, "use_sliding_window": False, "vocab_size": 151936}

# google/gemma-2-2b's config.json, as published
GEMMA2_2B = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
    "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
    "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
    "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "torch_dtype": "float32",
    "transformers_version": "4.42.4", "use_cache": True, "vocab_size": 256000}


@pytest.mark.parametrize("name, published, count", [
    ("qwen2.5-0.5b", QWEN25_05B, 494_032_768),
    ("gemma-2-2b", GEMMA2_2B, 2_614_341_888),
])
def test_qwen25_and_gemma2_presets_are_the_published_configs(name, published, count):
    assert spelled_alike(config_from_hf(published)) == spelled_alike(preset(name))
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**published))
    assert hf.lm_head.weight is hf.model.embed_tokens.weight  # tied: counted once
    assert analyze(preset(name))["params"]["total"] == sum(p.numel() for p in hf.parameters()) == count


def test_qwen2_and_gemma2_parts():
    qwen = analyze(preset("qwen2.5-0.5b"))["params"]
    # per layer q (896 × 896), k and v (896 × 128 each), o (896 × 896); biases on q, k and v only
    assert qwen["attention"] == 24 * (2 * 896 * 896 + 2 * 896 * 128 + 896 + 2 * 128)
    gemma = analyze(preset("gemma-2-2b"))
    # four (1 + w) norms per layer (the sandwich) and the final one
    assert gemma["params"]["norms"] == 26 * 4 * 2304 + 2304
    # 2 (k and v) × 26 layers × 4 kv heads × 256 × 4 B per position; at 8192 the 13 local layers keep
    # their 4096-token window, the 13 global ones everything (transformers' hybrid cache)
    assert gemma["kv_cache_per_token"] == 2 * 26 * 4 * 256 * 4
    assert gemma["kv_cache"] == 2 * 4 * 256 * 4 * (13 * 4096 + 13 * 8192)
    # half the layers see at most 4096 keys: at 8192 the mean is between the window's and full attention's
    full = analyze(dataclasses.replace(preset("gemma-2-2b"), attention="full"))["flops"]["attention_per_token_layer"]
    sliding = analyze(dataclasses.replace(preset("gemma-2-2b"), attention="sliding"))["flops"]
    assert gemma["flops"]["attention_per_token_layer"] == pytest.approx(
        (full + sliding["attention_per_token_layer"]) / 2)
