import dataclasses

import pytest
import torch

from engine.nn.ffn import FFNS


@pytest.mark.parametrize("name", FFNS)
@pytest.mark.parametrize("bias", [True, False])
def test_shape_and_param_count(name, bias, tiny_config):
    cfg = dataclasses.replace(tiny_config, bias=bias)
    ffn = FFNS[name](cfg)
    x = torch.randn(2, 5, cfg.n_embd)
    assert ffn(x).shape == x.shape
    assert FFNS[name].num_params(cfg) == sum(p.numel() for p in ffn.parameters())
    assert FFNS[name].n_proj * cfg.n_embd * FFNS[name].hidden_dim(cfg) == sum(
        p.numel() for n, p in ffn.named_parameters() if n.endswith("weight")
    )


@pytest.mark.parametrize("ffn_mult", [0.5, 1.0, 8 / 3, 4.0])
def test_swiglu_width_is_a_multiple_of_8_and_matches_gelu_size(ffn_mult, tiny_config):
    cfg = dataclasses.replace(tiny_config, n_embd=96, n_head=4, ffn_mult=ffn_mult, bias=False)
    hidden = FFNS["swiglu"].hidden_dim(cfg)
    assert hidden % 8 == 0
    ratio = FFNS["swiglu"].num_params(cfg) / FFNS["gelu"].num_params(cfg)
    assert 0.9 < ratio < 1.5


@pytest.mark.parametrize("name", FFNS)
def test_ffn_hidden_sets_the_width_exactly(name, tiny_config):
    cfg = dataclasses.replace(tiny_config, ffn_hidden=44)
    assert FFNS[name].hidden_dim(cfg) == 44
    assert FFNS[name](cfg).down_proj.weight.shape == (cfg.n_embd, 44)
    assert FFNS[name].num_params(cfg) == sum(p.numel() for p in FFNS[name](cfg).parameters())


def test_geglu_gates_with_gelu(tiny_config):
    ffn = FFNS["geglu"](tiny_config)
    x = torch.randn(2, 3, tiny_config.n_embd)
    expected = ffn.down_proj(torch.nn.functional.gelu(ffn.gate_proj(x), approximate="tanh") * ffn.up_proj(x))
    torch.testing.assert_close(ffn(x), expected)


def test_projection_names_follow_hf(tiny_config):
    assert {n.split(".")[0] for n, _ in FFNS["gelu"](tiny_config).named_parameters()} == {"up_proj", "down_proj"}
    for gated in ("swiglu", "geglu"):
        names = {n.split(".")[0] for n, _ in FFNS[gated](tiny_config).named_parameters()}
        assert names == {"gate_proj", "up_proj", "down_proj"}
