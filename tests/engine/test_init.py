import subprocess
import sys
from pathlib import Path

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
