import dataclasses
import math

import pytest
import torch

from engine.nn.position import POSITIONS, ROPE_SCALINGS, alibi_slopes, apply_rotary, sinusoids


@pytest.mark.parametrize("name", POSITIONS)
def test_shape_and_param_count(name, tiny_config):
    pos = POSITIONS[name](tiny_config)
    x = torch.randn(2, tiny_config.block_size, tiny_config.n_embd)
    assert pos(x).shape == x.shape
    assert pos(x[:, :5]).shape == (2, 5, tiny_config.n_embd)  # shorter than the context
    assert pos(x[:, :5], 3).shape == (2, 5, tiny_config.n_embd)  # later positions
    assert POSITIONS[name].num_params(tiny_config) == sum(p.numel() for p in pos.parameters())


def test_sinusoidal_handles_odd_width(tiny_config):
    cfg = dataclasses.replace(tiny_config, n_embd=31, n_head=1)
    pos = POSITIONS["sinusoidal"](cfg)
    assert pos(torch.zeros(1, 4, 31)).shape == (1, 4, 31)


def test_sinusoidal_continues_beyond_its_table(tiny_config):
    pos = POSITIONS["sinusoidal"](tiny_config)
    x = torch.zeros(1, 8, tiny_config.n_embd)
    torch.testing.assert_close(pos(x, start_pos=12)[0], sinusoids(0, 20, tiny_config.n_embd)[12:])
    torch.testing.assert_close(pos(x, start_pos=4), pos(torch.zeros(1, 12, tiny_config.n_embd))[:, 4:])


def test_learned_refuses_beyond_block_size(tiny_config):
    with pytest.raises(ValueError, match=r"beyond block_size \(16\).*rope"):
        POSITIONS["learned"](tiny_config)(torch.zeros(1, 4, tiny_config.n_embd), start_pos=14)


@pytest.mark.parametrize("name", ["learned", "sinusoidal"])
def test_positions_differ(name, tiny_config):
    pe = POSITIONS[name](tiny_config)(torch.zeros(1, tiny_config.block_size, tiny_config.n_embd))[0]
    assert not torch.allclose(pe[0], pe[1])


@pytest.mark.parametrize("name", ["none", "rope", "alibi"])
def test_relative_schemes_leave_the_embeddings_alone(name, tiny_config):
    x = torch.randn(2, 4, tiny_config.n_embd)
    assert torch.equal(POSITIONS[name](tiny_config)(x), x)


@pytest.mark.parametrize("scaling", ROPE_SCALINGS)
def test_rope_scores_depend_on_distance_only(scaling, tiny_config):
    cfg = dataclasses.replace(tiny_config, position="rope", rope_scaling=scaling, rope_factor=4.0)
    rope = POSITIONS["rope"](cfg)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        cos, sin = rope.rotary(0, 40, torch.device("cpu"))
        return (apply_rotary(q, cos[i], sin[i]) * apply_rotary(k, cos[j], sin[j])).sum()

    torch.testing.assert_close(score(5, 2), score(35, 32), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 4))


@pytest.mark.parametrize(
    "scaling,hf_type", [("none", "default"), ("linear", "linear"), ("yarn", "yarn")]
)
def test_rope_frequencies_equal_transformers(scaling, hf_type, tiny_config):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = dataclasses.replace(tiny_config, n_embd=64, position="rope", rope_scaling=scaling, rope_factor=4.0,
                              rope_theta=500.0, rope_original_block_size=32)
    params = {"rope_type": hf_type, "rope_theta": 500.0}
    if hf_type != "default":
        params |= {"factor": 4.0, "original_max_position_embeddings": 32}
    hf_cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=128,
                                      rope_parameters=params)
    if hf_type == "default":
        expected = 1.0 / (500.0 ** (torch.arange(0, 16, 2).float() / 16)), 1.0
    else:
        expected = ROPE_INIT_FUNCTIONS[hf_type](hf_cfg, None)
    inv_freq, factor = ROPE_SCALINGS[scaling](cfg, 16)
    torch.testing.assert_close(inv_freq, expected[0])
    assert factor == pytest.approx(expected[1])


def test_ntk_raises_the_base(tiny_config):
    cfg = dataclasses.replace(tiny_config, position="rope", rope_scaling="ntk", rope_factor=4.0)
    inv_freq, factor = ROPE_SCALINGS["ntk"](cfg, 8)
    base = 10000.0 * 4.0 ** (8 / 6)
    torch.testing.assert_close(inv_freq, 1.0 / base ** (torch.arange(0, 8, 2).float() / 8))
    plain, _ = ROPE_SCALINGS["none"](cfg, 8)
    assert inv_freq[0] == plain[0] and inv_freq[-1] == pytest.approx(plain[-1] / 4.0)  # the lowest is interpolated
    assert factor == 1.0


@pytest.mark.parametrize(
    "n_head,expected",
    [
        (8, [2 ** -(i + 1) for i in range(8)]),  # the paper's example: 1/2, 1/4, ..., 1/256
        (4, [2 ** -(2 * (i + 1)) for i in range(4)]),
        # not a power of 2: the 4-head slopes, then every other one of the 8-head slopes
        (6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]),
        (1, [2**-8]),
    ],
)
def test_alibi_slopes_follow_the_paper(n_head, expected):
    torch.testing.assert_close(alibi_slopes(n_head), torch.tensor(expected))
    assert math.isclose(float(alibi_slopes(n_head)[0]), expected[0])
