import dataclasses

import pytest
import torch

from engine.attention import ATTENTION_FUNCTIONS, CausalSelfAttention, eager_attention


@pytest.mark.parametrize("impl", ATTENTION_FUNCTIONS)
def test_matches_eager_reference(impl):
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))  # (B, nh, T, hs)
    torch.testing.assert_close(
        ATTENTION_FUNCTIONS[impl](q, k, v, dropout_p=0.0), eager_attention(q, k, v, dropout_p=0.0)
    )


@pytest.mark.parametrize("impl", ATTENTION_FUNCTIONS)
def test_is_causal(impl):
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    y = ATTENTION_FUNCTIONS[impl](q, k, v, dropout_p=0.0)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:], v2[:, :, 4:] = torch.randn(1, 2, 2, 4), torch.randn(1, 2, 2, 4)
    y2 = ATTENTION_FUNCTIONS[impl](q, k2, v2, dropout_p=0.0)
    torch.testing.assert_close(y[:, :, :4], y2[:, :, :4])
    assert not torch.allclose(y[:, :, 4:], y2[:, :, 4:])


def test_module_sdpa_equals_eager(tiny_config):
    sdpa = CausalSelfAttention(dataclasses.replace(tiny_config, attn_impl="sdpa"))
    eager = CausalSelfAttention(dataclasses.replace(tiny_config, attn_impl="eager"))
    eager.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 7, tiny_config.n_embd)
    torch.testing.assert_close(sdpa(x), eager(x))


@pytest.mark.parametrize("bias", [True, False])
def test_param_count_and_hf_names(bias, tiny_config):
    cfg = dataclasses.replace(tiny_config, bias=bias)
    attn = CausalSelfAttention(cfg)
    assert CausalSelfAttention.num_params(cfg) == sum(p.numel() for p in attn.parameters())
    assert {n.split(".")[0] for n, _ in attn.named_parameters()} == {"q_proj", "k_proj", "v_proj", "o_proj"}
