import dataclasses
import json

import pytest

from engine import (
    DATA_SOURCES,
    FFNS,
    NORMS,
    POSITIONS,
    TASKS,
    TOKENIZERS,
    ConfigError,
    DataConfig,
    JobSpec,
    ModelConfig,
    TrainConfig,
    choices,
    field_specs,
    parse_spec,
)


def errors_of(spec: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        parse_spec(spec)
    return e.value.errors


def test_defaults_are_valid_and_vocab_is_resolved():
    spec = parse_spec({})
    assert spec.model.vocab_size == describe_vocab(spec.data)
    assert spec.train == TrainConfig() and spec.data == DataConfig()


def describe_vocab(data_cfg):
    from engine import describe_data

    return describe_data(data_cfg)["vocab_size"]


def test_json_round_trip(tiny_job):
    spec = parse_spec(tiny_job)
    again = parse_spec(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert JobSpec.from_dict(spec.to_dict()) == spec
    for cfg in (spec.model, spec.data, spec.train):
        assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_form_strings_are_coerced():
    spec = parse_spec({"model": {"n_layer": "2", "bias": "false", "dropout": "0.1"}, "train": {"steps": 40.0}})
    assert spec.model.n_layer == 2 and spec.model.bias is False and spec.model.dropout == 0.1
    assert spec.train.steps == 40 and isinstance(spec.train.steps, int)


def test_n_head_must_divide_n_embd():
    assert errors_of({"model": {"n_head": 6, "n_embd": 128}}) == {"model.n_head": "n_head (6) must divide n_embd (128)"}


def test_head_dim_lets_heads_not_divide_the_width():
    # Mistral-NeMo's shape, scaled down: 6 heads of 16 in a 64 stream (6 does not divide 64)
    spec = parse_spec({"model": {"n_head": 6, "n_kv_head": 2, "n_embd": 64, "head_dim": 16, "position": "rope"}})
    assert spec.model.head_dim == 16
    assert spec.model.head_size == 16 and spec.model.attention_width == 96


def test_head_dim_defaults_to_width_over_heads():
    cfg = ModelConfig(n_head=4, n_embd=128)
    assert cfg.head_dim is None and cfg.head_size == 32 and cfg.attention_width == 128
    # a spec saved before the field existed parses to the same config as one that says None
    saved = {k: v for k, v in cfg.to_dict().items() if k != "head_dim"}
    assert ModelConfig.from_dict(saved) == cfg == ModelConfig.from_dict(cfg.to_dict())
    assert parse_spec({"model": saved}) == parse_spec({"model": {**saved, "head_dim": None}})


@pytest.mark.parametrize("model,message", [
    ({"head_dim": 0}, "head_dim must be ≥ 1 (got 0)"),
    ({"head_dim": -8}, "head_dim must be ≥ 1 (got -8)"),
    ({"head_dim": 2.5}, "head_dim must be a whole number (got 2.5)"),
    ({"head_dim": 9, "position": "rope"},
     "position 'rope' rotates pairs of dimensions, so the head size head_dim (9) must be even"),
])
def test_head_dim_is_checked(model, message):
    assert errors_of({"model": model})["model.head_dim"] == message


def test_head_dim_is_in_the_form():
    spec = {s["name"]: s for s in field_specs()}["model.head_dim"]
    assert spec["group"] == "Shape" and spec["type"] == "int" and spec["default"] is None and spec["min"] == 1


@pytest.mark.parametrize(
    "section,key",
    [("model", "n_layer"), ("model", "n_head"), ("model", "n_embd"), ("model", "block_size"),
     ("train", "steps"), ("train", "batch_size"), ("train", "eval_interval"), ("train", "eval_iters"),
     ("train", "log_interval"), ("data", "task_length")],
)
@pytest.mark.parametrize("value", [0, -3])
def test_sizes_must_be_positive(section, key, value):
    errors = errors_of({section: {key: value}})
    assert errors[f"{section}.{key}"] == f"{key} must be ≥ 1 (got {value})"


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("model", "dropout", 1.0, "dropout must be < 1 (got 1)"),
        ("model", "dropout", -0.1, "dropout must be ≥ 0 (got -0.1)"),
        ("train", "lr", 0, "lr must be > 0 (got 0)"),
        ("train", "warmup_steps", 500, "warmup_steps (500) must be ≤ steps (300)"),
        ("model", "n_layer", "two", "n_layer must be a whole number (got 'two')"),
        ("model", "bias", "maybe", "bias must be true or false (got 'maybe')"),
        ("train", "lr", float("nan"), "lr must be a finite number (got nan)"),
        ("data", "task_length", 17, None),
    ],
)
def test_bad_values_name_the_field_and_value(section, key, value, message):
    spec = {section: {key: value}}
    if key == "task_length":
        spec["data"]["task"] = "recall"
        message = "task_length (17) must be ≤ 16 for recall"
    assert errors_of(spec)[f"{section}.{key}"] == message


@pytest.mark.parametrize(
    "section,key,registry",
    [("model", "norm", NORMS), ("model", "position", POSITIONS), ("model", "ffn", FFNS),
     ("data", "source", DATA_SOURCES), ("data", "task", TASKS), ("data", "tokenizer", TOKENIZERS)],
)
def test_unknown_registry_key_lists_the_choices(section, key, registry):
    message = errors_of({section: {key: "nope"}})[f"{section}.{key}"]
    assert message == f"unknown {key} 'nope'; choose from {list(registry)}"


def test_unknown_keys_and_sections_are_named():
    errors = errors_of({"model": {"n_layers": 2}, "optim": {}})
    assert "'n_layers'" in errors["model.n_layers"] and "n_layer" in errors["model.n_layers"]
    assert "'optim'" in errors["optim"]
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict({"width": 3})
    assert "'width'" in e.value.errors["model.width"]


def test_every_error_is_collected():
    errors = errors_of({
        "model": {"n_layer": 0, "n_head": 6, "norm": "rms"},
        "data": {"tokenizer": "bpe"},
        "train": {"batch_size": -1, "lr": 0, "device": "tpu"},
    })
    assert set(errors) == {"model.n_layer", "model.n_head", "model.norm", "data.tokenizer",
                           "train.batch_size", "train.lr", "train.device"}


def test_context_longer_than_a_small_text_file(text_file):
    errors = errors_of({"model": {"block_size": 512}, "data": {"source": "text", "path": text_file}})
    message = errors["model.block_size"]
    assert "block_size (512)" in message and "validation split has 64 tokens" in message


def test_synthetic_example_longer_than_the_context():
    errors = errors_of({"model": {"block_size": 16}, "data": {"task": "copy", "task_length": 8}})
    assert errors["model.block_size"].startswith("block_size (16) is shorter than one copy example (18 tokens")


def test_text_source_needs_a_readable_file(tmp_path):
    assert errors_of({"data": {"source": "text"}}) == {"data.path": "path is required when source is 'text'"}
    missing = str(tmp_path / "missing.txt")
    assert errors_of({"data": {"source": "text", "path": missing}}) == {"data.path": f"file not found: {missing}"}


def test_vocab_size_smaller_than_the_data_is_refused():
    assert "smaller than the data's vocabulary" in errors_of({"model": {"vocab_size": 3}})["model.vocab_size"]
    assert parse_spec({"model": {"vocab_size": 100}}).model.vocab_size == 100


def test_cuda_is_not_a_parse_error():
    assert parse_spec({"train": {"device": "cuda"}}).train.device == "cuda"


def test_from_dict_is_lenient_and_validate_is_not():
    cfg = ModelConfig.from_dict({"n_head": 6})  # a half-typed form can still be analysed
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert list(e.value.errors) == ["model.n_head"]
    ModelConfig().validate()


def test_choices_come_from_the_registries():
    c = choices()
    assert set(c) >= {"family", "norm", "position", "ffn", "tokenizer", "source", "task", "device"}
    assert c["norm"] == list(NORMS) and c["task"] == list(TASKS) and c["device"] == ["cpu", "cuda", "auto"]


def test_field_specs_describe_every_settable_field():
    specs = field_specs()
    names = [s["name"] for s in specs]
    assert len(names) == len(set(names))
    assert "model.vocab_size" not in names and "data.path" not in names
    assert names[0] == "model.family"
    sections = (ModelConfig, DataConfig, TrainConfig)
    every = {f"{cls.section}.{f.name}" for cls in sections for f in dataclasses.fields(cls)}
    assert set(names) == every - {"model.vocab_size", "model.n_token_type", "data.path", "data.tokenizer_file",
                                  "train.init_from"}
    for s in specs:
        assert {"name", "section", "key", "label", "type", "default", "min", "max", "help"} <= set(s)
        assert s["name"] == f"{s['section']}.{s['key']}"
        assert s["type"] in {"int", "float", "bool", "choice", "str"}
        assert s["help"].endswith(".") and s["label"]
        if s["type"] == "choice":
            assert s["choices"] == choices()[s["key"]] and s["default"] in s["choices"]
        if s["type"] == "float":
            assert "step" in s
    # the defaults, sent back as a form would, are a valid spec
    form = {}
    for s in specs:
        form.setdefault(s["section"], {})[s["key"]] = s["default"]
    assert parse_spec(json.loads(json.dumps(form))) == parse_spec({})


@pytest.mark.parametrize(
    "model,field,message",
    [
        ({"n_kv_head": 3}, "n_kv_head", "n_kv_head (3) must divide n_head (4)"),
        ({"n_head": 8, "n_embd": 24, "position": "rope"}, "position",
         "position 'rope' rotates pairs of dimensions, so the head size n_embd / n_head (3) must be even"),
        ({"position": "alibi", "attention": "linear"}, "position", None),
        ({"n_expert": 2, "top_k": 3}, "top_k", "top_k (3) must be ≤ n_expert (2)"),
        ({"n_expert": 2, "n_layer": 2, "moe_every": 3}, "moe_every",
         "moe_every (3) must be ≤ n_layer (2), or no layer is MoE"),
        ({"attention": "local_global", "n_layer": 2, "global_every": 3}, "global_every",
         "global_every (3) must be ≤ n_layer (2), or no layer is global"),
        ({"attention": "ring"}, "attention", "unknown attention 'ring'; choose from "
         "['full', 'sliding', 'local_global', 'dilated', 'block_sparse', 'linear']"),
        ({"rope_scaling": "dynamic"}, "rope_scaling", "unknown rope_scaling 'dynamic'; choose from "
         "['none', 'linear', 'ntk', 'yarn']"),
        ({"norm_eps": 0}, "norm_eps", "norm_eps must be > 0 (got 0)"),
        ({"rope_factor": 0.5}, "rope_factor", "rope_factor must be ≥ 1 (got 0.5)"),
        ({"window": 0}, "window", "window must be ≥ 1 (got 0)"),
    ],
)
def test_architecture_fields_are_checked(model, field, message):
    errors = errors_of({"model": model})
    assert list(errors) == [f"model.{field}"]
    if message:
        assert errors[f"model.{field}"] == message
    else:
        assert "'alibi'" in errors["model.position"] and "'linear'" in errors["model.position"]


def test_the_spec_names_are_accepted():
    spec = parse_spec({"model": {
        "n_kv_head": 2, "attention": "sliding", "window": 8, "qk_norm": True, "attn_softcap": 50.0,
        "final_softcap": 30.0, "position": "rope", "rope_theta": 500000.0, "rope_scaling": "yarn", "rope_factor": 4.0,
        "rope_original_block_size": 32, "norm_placement": "sandwich", "norm_eps": 1e-6, "ffn": "geglu",
        "ffn_hidden": 96, "scale_residual_init": False, "n_expert": 4, "top_k": 2, "capacity_factor": 0.0,
        "moe_every": 2, "shared_expert": True, "moe_renormalize": False, "aux_loss_coef": 0.02, "z_loss_coef": 0.0,
        "dilation": 3, "sparse_block": 8, "sparse_stride": 2, "feature_map": "relu",
    }})
    assert spec.model.n_kv_head == 2 and spec.model.rope_original_block_size == 32


def test_show_if_names_real_fields_and_values():
    specs = {s["name"]: s for s in field_specs()}
    for s in specs.values():
        for other, cond in s.get("show_if", {}).items():
            assert other in specs and other != s["name"]
            if isinstance(cond, dict):
                assert set(cond) <= {"min", "max"}
            else:  # a choice field's values, or a switch's (q/k/v biases are shown with Biases off)
                assert set(cond) <= set(specs[other].get("choices", [True, False]))
    assert specs["model.window"]["show_if"] == {"model.attention": ["sliding", "local_global"]}
    assert specs["model.global_every"]["show_if"] == {"model.attention": ["local_global"]}
    assert specs["model.qkv_bias"]["show_if"] == {"model.bias": [False]}
    assert specs["model.top_k"]["show_if"] == {"model.n_expert": {"min": 1}}
    assert "show_if" not in specs["model.n_layer"]
    for key in ("n_kv_head", "attention", "qk_norm", "norm_placement", "ffn_hidden", "n_expert", "rope_theta"):
        help_text = specs[f"model.{key}"]["help"]
        assert len(help_text) > 40 and "\n" not in help_text


def test_every_form_field_has_a_group_and_groups_name_real_fields():
    import dataclasses

    from engine.config.schema import FIELD_GROUPS, SECTIONS

    specs = field_specs()
    assert not [s["name"] for s in specs if s["group"] == "Other"]
    for section, groups in FIELD_GROUPS.items():
        names = {f.name for f in dataclasses.fields(SECTIONS[section]) if f.metadata["form"]}
        listed = [k for keys in groups.values() for k in keys]
        assert sorted(listed) == sorted(names), section
    # consecutive: each group's fields come together, so the form shows each heading once
    seen = []
    for s in specs:
        key = (s["section"], s["group"])
        if not seen or seen[-1] != key:
            assert key not in seen
            seen.append(key)


@pytest.mark.parametrize(
    "model,field,message",
    [
        ({"n_decoder_layer": 2}, "n_decoder_layer",
         "n_decoder_layer (2) only applies to family 'encoder_decoder' (got 'decoder'); leave it empty"),
        ({"n_token_type": 2, "family": "encoder_decoder"}, "n_token_type",
         "n_token_type (2) only applies to family 'encoder' (got 'encoder_decoder')"),
        ({"position": "t5_relative", "attention": "linear", "family": "encoder"}, "position", None),
        ({"position": "t5_relative", "relative_attention_num_buckets": 32, "relative_attention_max_distance": 16},
         "relative_attention_max_distance", "relative_attention_max_distance (16) must exceed "
         "relative_attention_num_buckets / 2 (16), the distances a causal stack gives a bucket each"),
        ({"family": "encoder_decoder", "block_size": 1}, "block_size", None),
        ({"family": "bert"}, "family", "unknown family 'bert'; choose from ['decoder', 'encoder', 'encoder_decoder']"),
        ({"mlm_probability": 1.0, "family": "encoder"}, "mlm_probability", "mlm_probability must be < 1 (got 1)"),
    ],
)
def test_family_fields_are_checked(model, field, message):
    errors = errors_of({"model": model})
    assert list(errors) == [f"model.{field}"]
    if message:
        assert errors[f"model.{field}"] == message
    elif field == "position":
        assert "'t5_relative'" in errors["model.position"] and "'linear'" in errors["model.position"]


@pytest.mark.parametrize("family,special", [("decoder", 0), ("encoder", 1), ("encoder_decoder", 1)])
def test_vocab_size_includes_the_objectives_special_tokens(family, special):
    spec = parse_spec({"model": {"family": family}, "data": {"task": "copy"}})
    assert spec.model.vocab_size == 18 + special  # 16 letters, ">" and "."
    if special:  # the data's own vocabulary leaves no room for them
        errors = errors_of({"model": {"family": family, "vocab_size": 18}, "data": {"task": "copy"}})
        assert "special tokens" in errors["model.vocab_size"]


def test_family_fields_show_only_for_their_family():
    specs = {s["name"]: s for s in field_specs()}
    assert specs["model.mlm_probability"]["show_if"] == {"model.family": ["encoder"]}
    for key in ("n_decoder_layer", "noise_density", "mean_span_length"):
        assert specs[f"model.{key}"]["show_if"] == {"model.family": ["encoder_decoder"]}
    for key in ("relative_attention_num_buckets", "relative_attention_max_distance"):
        assert specs[f"model.{key}"]["show_if"] == {"model.position": ["t5_relative"]}
    assert "model.n_token_type" not in specs  # set by checkpoint imports, not the form
    for key in ("family", "n_decoder_layer", "mlm_probability", "noise_density", "relative_attention_num_buckets"):
        assert len(specs[f"model.{key}"]["help"]) > 40
