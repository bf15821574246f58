"""Engine fixtures: the tiny shared config (2 layers, 4 heads, width 32) and small inputs."""

import pytest
import torch

from engine import ModelConfig

TINY = {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 16}
# pattern sizes that make every attention kind differ from full attention within 16 tokens
TINY_PATTERNS = {"window": 4, "dilation": 2, "sparse_block": 4, "sparse_stride": 2}

# a job that trains in well under a second: copy of 3 letters, learnt in a few dozen steps
TINY_JOB = {
    "model": dict(TINY),
    "data": {"source": "synthetic", "task": "copy", "task_length": 3},
    "train": {"steps": 12, "batch_size": 16, "lr": 1e-2, "warmup_steps": 3, "eval_interval": 5, "eval_iters": 2},
}

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 8


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig(**TINY, **TINY_PATTERNS, vocab_size=23)


@pytest.fixture
def tiny_job() -> dict:
    import copy

    return copy.deepcopy(TINY_JOB)


@pytest.fixture
def text_file(tmp_path) -> str:
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    # at these sizes one thread beats several, and does not collapse when the machine is busy
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def model_variants() -> list[dict]:
    """Config overrides that cover every key of every model registry, one at a time (so a new
    entry is tested automatically), plus combinations that change parameter shapes."""
    from engine.nn.attention import ATTENTIONS, FEATURE_MAPS
    from engine.nn.ffn import FFNS
    from engine.nn.norm import NORM_PLACEMENTS, NORMS
    from engine.nn.position import POSITIONS, ROPE_SCALINGS

    out = [{"norm": k} for k in NORMS] + [{"norm_placement": k} for k in NORM_PLACEMENTS]
    out += [{"position": k} for k in POSITIONS] + [{"ffn": k} for k in FFNS]
    out += [{"attention": k} for k in ATTENTIONS]
    out += [{"attention": "linear", "feature_map": k} for k in FEATURE_MAPS]
    out += [{"position": "rope", "rope_scaling": k, "rope_factor": 2.0} for k in ROPE_SCALINGS]
    out += [
        {"n_kv_head": 1}, {"n_kv_head": 2, "bias": False}, {"qk_norm": True, "position": "rope"},
        {"ffn": "geglu", "ffn_hidden": 20}, {"tie_embeddings": False, "bias": False},
        {"attn_softcap": 5.0, "final_softcap": 3.0, "position": "alibi"},
        {"n_expert": 4, "top_k": 2, "capacity_factor": 0.0},
        {"n_expert": 3, "top_k": 1, "shared_expert": True, "moe_every": 2, "ffn": "swiglu", "capacity_factor": 0.0},
        # an explicit head size: heads wider (4 × 12 = 48) or narrower (4 × 6 = 24) together than the width 32
        {"head_dim": 12, "position": "rope", "n_kv_head": 2}, {"head_dim": 6, "qk_norm": True},
        # Qwen2's biases on q, k and v alone; Gemma 2's parts together (issue 15)
        {"qkv_bias": True, "bias": False, "n_kv_head": 2},
        {"embed_scale": True, "query_pre_attn_scalar": 12, "position": "rope"},
        {"norm": "rmsnorm_offset", "norm_placement": "sandwich", "ffn": "geglu", "attention": "local_global",
         "window": 3, "embed_scale": True, "attn_softcap": 5.0, "final_softcap": 3.0, "head_dim": 12,
         "position": "rope", "n_kv_head": 2, "bias": False},
    ]
    return out


def variant_id(v: dict) -> str:
    return "-".join(f"{k}={val}" for k, val in v.items())
