import subprocess
import sys
from pathlib import Path

import pytest

import engine

PUBLIC = [
    "ModelConfig", "DataConfig", "TrainConfig", "JobSpec", "ConfigError", "parse_spec", "build_model", "train",
    "TrainResult", "analyze", "describe_data", "choices", "field_specs", "generate", "TOKENIZERS", "DATA_SOURCES",
    "TASKS", "NORMS", "POSITIONS", "FFNS", "ATTENTIONS", "AttentionKind", "register_attention",
    "unregister_attention", "describe_attentions", "KVCache", "SlidingWindowCache", "capture_attention",
    "attention_snapshot", "attention_event",
    "to_transformers", "from_transformers", "config_from_hf", "PRESETS", "preset",
    "HARDWARE", "fit", "largest_batch", "tokenlab", "structure",
    "checkpoint", "run_inference", "QUANTIZATIONS", "quantize", "quantization_table", "weight_bytes",
]


def test_public_api():
    assert sorted(engine.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(engine, name), name
    assert callable(engine.train)  # the function, not the engine.train module


def test_engine_never_imports_the_web_stack():
    code = (
        "import sys, engine\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'django', 'channels', 'celery', 'explorer'})\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == ""


def test_import_engine_does_not_load_transformers():
    code = "import sys, engine; print('transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("statement", ["import engine", "import engine.config", "from engine import ModelConfig, choices"])
def test_importing_the_api_or_the_config_loads_no_torch(statement):
    """The public API resolves its names on first use and the config layer names its registries,
    so a fresh interpreter reading a config loads neither torch nor the web stack."""
    code = (
        f"import sys\n{statement}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'numpy', 'django', 'channels', 'celery'})\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == ""


def test_config_validation_loads_its_registries_when_needed():
    code = (
        "import sys\nfrom engine.config import ModelConfig, ConfigError\n"
        "try:\n    ModelConfig(norm='rms').validate()\nexcept ConfigError as e:\n    print(e.errors['model.norm'])\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.splitlines() == ["unknown norm 'rms'; choose from ['layernorm', 'rmsnorm', 'rmsnorm_offset']", "True"]


def test_every_public_name_resolves_to_its_module():
    for name in PUBLIC:
        assert getattr(engine, name) is not None, name
    assert engine.checkpoint.__name__ == "engine.training.checkpoint"
    assert engine.tokenlab.__name__ == "engine.tokenlab"
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        engine.nonexistent  # noqa: B018


def test_import_contracts_hold():
    """pyproject.toml's import-linter contracts: the engine's layers (docs/engine.md, "Layers"),
    a torch-free engine.config and no web stack in the engine."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if not lint_imports.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    done = subprocess.run([str(lint_imports), "--no-cache"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout
