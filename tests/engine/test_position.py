import dataclasses

import pytest
import torch

from engine.position import POSITIONS


@pytest.mark.parametrize("name", POSITIONS)
def test_shape_and_param_count(name, tiny_config):
    pos = POSITIONS[name](tiny_config)
    x = torch.randn(2, tiny_config.block_size, tiny_config.n_embd)
    assert pos(x).shape == x.shape
    assert pos(x[:, :5]).shape == (2, 5, tiny_config.n_embd)  # shorter than the context
    assert POSITIONS[name].num_params(tiny_config) == sum(p.numel() for p in pos.parameters())


def test_sinusoidal_handles_odd_width(tiny_config):
    cfg = dataclasses.replace(tiny_config, n_embd=31, n_head=1)
    pos = POSITIONS["sinusoidal"](cfg)
    assert pos(torch.zeros(1, 4, 31)).shape == (1, 4, 31)


@pytest.mark.parametrize("name", ["learned", "sinusoidal"])
def test_positions_differ(name, tiny_config):
    pe = POSITIONS[name](tiny_config)(torch.zeros(1, tiny_config.block_size, tiny_config.n_embd))[0]
    assert not torch.allclose(pe[0], pe[1])


def test_none_is_identity(tiny_config):
    x = torch.randn(2, 4, tiny_config.n_embd)
    assert torch.equal(POSITIONS["none"](tiny_config)(x), x)
