import pytest
import torch

from engine.nn.norm import NORM_PLACEMENTS, NORMS


@pytest.mark.parametrize("name", NORMS)
@pytest.mark.parametrize("bias", [True, False])
def test_shape_and_param_count(name, bias):
    norm = NORMS[name](32, bias=bias)
    x = torch.randn(2, 5, 32)
    assert norm(x).shape == x.shape
    assert NORMS[name].num_params(32, bias=bias) == sum(p.numel() for p in norm.parameters())


@pytest.mark.parametrize("name", NORMS)
def test_output_is_scale_free(name):
    # every norm divides out the input's scale: that is what keeps the residual stream in range
    norm = NORMS[name](32, bias=False)
    x = torch.randn(4, 32)
    torch.testing.assert_close(norm(x), norm(7.0 * x), rtol=1e-4, atol=1e-4)


def test_rmsnorm_has_unit_rms_and_no_bias():
    norm = NORMS["rmsnorm"](32, bias=True)
    y = norm(torch.randn(8, 32) * 3 + 1)
    torch.testing.assert_close(y.pow(2).mean(-1).sqrt(), torch.ones(8), rtol=1e-3, atol=1e-3)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]


def test_offset_rmsnorm_is_rmsnorm_with_gain_one_plus_w():
    """Gemma's RMSNorm stores the gain as w and applies (1 + w), w starting at 0: at init the
    plain normalisation, and with any w what RMSNorm gives with gain 1 + w."""
    offset, plain = NORMS["rmsnorm_offset"](32, bias=True, eps=1e-6), NORMS["rmsnorm"](32, bias=True, eps=1e-6)
    assert [n for n, _ in offset.named_parameters()] == ["weight"] and not offset.weight.any()
    x = torch.randn(8, 32) * 3 + 1
    torch.testing.assert_close(offset(x), plain(x))
    with torch.no_grad():
        offset.weight.normal_()
        plain.weight.copy_(1 + offset.weight)
    torch.testing.assert_close(offset(x), plain(x))
    assert offset(x.bfloat16()).dtype == torch.bfloat16


def test_layernorm_centres_and_scales():
    y = NORMS["layernorm"](32, bias=True)(torch.randn(8, 32) * 3 + 1)
    torch.testing.assert_close(y.mean(-1), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(8), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", NORMS)
def test_eps_is_used(name):
    x = torch.full((1, 4), 1e-3)  # tiny variance: the epsilon dominates
    x[0, 0] = 0.0
    loose, tight = NORMS[name](4, bias=False, eps=1.0)(x), NORMS[name](4, bias=False, eps=1e-12)(x)
    assert loose.abs().max() < 0.01 < tight.abs().max()


@pytest.mark.parametrize("name", NORM_PLACEMENTS)
def test_placements(name):
    norm, post = NORMS["rmsnorm"](8, bias=False), NORMS["layernorm"](8, bias=False)
    f = lambda h: 3 * h + 1  # noqa: E731
    x = torch.randn(2, 8)
    expected = {"pre": x + f(norm(x)), "post": norm(x + f(x)), "sandwich": x + post(f(norm(x)))}
    torch.testing.assert_close(NORM_PLACEMENTS[name].apply(x, f, norm, post), expected[name])
    assert NORM_PLACEMENTS[name].n_norms in (1, 2)
