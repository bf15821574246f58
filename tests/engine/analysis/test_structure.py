"""``engine.analysis.structure``: the pictures are the registries' own definitions, for any size."""
import json
import math

import pytest
import torch

from engine import ATTENTIONS, ModelConfig, preset, structure
from engine.nn.position import alibi_slopes


@pytest.mark.parametrize("attention", [a for a in ATTENTIONS if a != "linear"])
def test_the_mask_is_the_patterns_definition(attention):
    cfg = ModelConfig(attention=attention, window=4, dilation=2, sparse_block=4, sparse_stride=2, block_size=16)
    s = structure(cfg, t=16)
    pos = torch.arange(16)
    allowed = ATTENTIONS[attention](cfg).allowed(pos[:, None], pos[None, :])
    first = allowed if allowed.dim() == 2 else allowed[0]
    assert s["mask"]["heads"][0] == first.int().tolist()
    assert s["mask"]["mean_keys"][0] == pytest.approx(first.sum(-1).float().mean().item())


def test_positions_and_any_size():
    rope = structure(ModelConfig(position="rope", block_size=8), t=8)["position"]
    assert rope["matrix"][0] == [1.0] * len(rope["matrix"][0])  # position 0: no rotation
    alibi = structure(ModelConfig(position="alibi", block_size=8), t=8)["position"]
    slope = alibi_slopes(4)[0].item()
    assert alibi["matrix"][5][2] == pytest.approx(-slope * 3) and alibi["matrix"][2][5] is None  # masked
    sin = structure(ModelConfig(position="sinusoidal", block_size=8), t=8)["position"]
    assert all(math.isclose(sin["matrix"][i][i], 1.0, rel_tol=1e-5) for i in range(8))
    assert structure(ModelConfig(position="learned"))["position"]["matrix"] is None
    big = structure(preset("llama-3-405b"), t=1000)  # t capped, nothing built
    assert big["t"] == 128 and len(big["mask"]["heads"][0]) == 128
    json.dumps(big, allow_nan=False)


def test_rope_pairs_follow_the_head_size():
    # 4 heads of 32 in a 128 stream: 16 pairs; with head_dim 48, 24 pairs (and Mistral-NeMo's 64)
    assert len(structure(ModelConfig(position="rope", block_size=8), t=8)["position"]["matrix"][0]) == 16
    wide = ModelConfig(position="rope", block_size=8, head_dim=48)
    assert len(structure(wide, t=8)["position"]["matrix"][0]) == 24
    assert len(structure(preset("mistral-nemo-12b"), t=8)["position"]["matrix"][0]) == 64
