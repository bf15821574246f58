import dataclasses

import pytest
import torch

from engine.nn.attention import (
    ATTENTION_FUNCTIONS,
    ATTENTIONS,
    FEATURE_MAPS,
    CausalSelfAttention,
    DilatedAttention,
    LinearAttention,
    MaskedAttention,
    eager_attention,
    repeat_kv,
)
from engine.nn.position import alibi_bias, alibi_slopes

SOFTMAX_KINDS = [k for k in ATTENTIONS if issubclass(ATTENTIONS[k], MaskedAttention)]


@pytest.mark.parametrize("impl", ATTENTION_FUNCTIONS)
def test_matches_eager_reference(impl):
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))  # (B, nh, T, hs)
    torch.testing.assert_close(
        ATTENTION_FUNCTIONS[impl](q, k, v, dropout_p=0.0), eager_attention(q, k, v, dropout_p=0.0)
    )


@pytest.mark.parametrize("impl", ATTENTION_FUNCTIONS)
@pytest.mark.parametrize("softcap", [0.0, 2.0])
def test_kernels_agree_with_a_mask_and_a_bias(impl, softcap):
    q, k, v = (torch.randn(2, 4, 5, 8) for _ in range(3))
    mask = torch.rand(4, 5, 5) > 0.5
    mask |= torch.eye(5, dtype=torch.bool)  # every query keeps one key
    bias = alibi_bias(alibi_slopes(4), torch.arange(5), torch.arange(5))
    kw = dict(mask=mask, bias=bias, softcap=softcap, dropout_p=0.0)
    torch.testing.assert_close(ATTENTION_FUNCTIONS[impl](q, k, v, **kw), eager_attention(q, k, v, **kw))


@pytest.mark.parametrize("impl", ATTENTION_FUNCTIONS)
def test_is_causal(impl):
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    y = ATTENTION_FUNCTIONS[impl](q, k, v, dropout_p=0.0)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:], v2[:, :, 4:] = torch.randn(1, 2, 2, 4), torch.randn(1, 2, 2, 4)
    y2 = ATTENTION_FUNCTIONS[impl](q, k2, v2, dropout_p=0.0)
    torch.testing.assert_close(y[:, :, :4], y2[:, :, :4])
    assert not torch.allclose(y[:, :, 4:], y2[:, :, 4:])


# ---- patterns: each mask equals its definition, written out plainly


def reference_allowed(cfg, kind: str, head: int, i: int, j: int, layer: int = 0) -> bool:
    """Whether query i may see key j (in ``layer``), from the docstrings' definitions."""
    if j > i:
        return False
    if kind in ("full", "linear"):
        return True
    if kind == "sliding":
        return i - j < cfg.window
    if kind == "local_global":  # layer l is global when (l + 1) % global_every == 0
        return (layer + 1) % cfg.global_every == 0 or i - j < cfg.window
    if kind == "dilated":
        group = head * min(4, cfg.n_head) // cfg.n_head
        return (i - j) % cfg.dilation**group == 0
    if kind == "block_sparse":
        b, s = cfg.sparse_block, cfg.sparse_stride
        same_block = i // b == j // b
        summary = j % (b * s) == b * s - 1
        return same_block or summary
    raise AssertionError(f"no reference for {kind}; add one")


@pytest.mark.parametrize("kind", SOFTMAX_KINDS)
@pytest.mark.parametrize("n_head,extra", [(4, {}), (8, {"window": 3, "dilation": 3, "sparse_block": 3,
                                                        "n_layer": 5, "global_every": 3})])
def test_mask_equals_its_definition(kind, n_head, extra, tiny_config):
    # each layer's pattern (a kind may differ by layer: local_global), and the mean over the layers
    cfg = dataclasses.replace(tiny_config, n_head=n_head, attention=kind, **extra)
    t, allowed = 20, 0
    for layer in range(cfg.n_layer):
        pattern = ATTENTIONS[kind].for_layer(cfg, layer)
        mask = pattern.mask(0, t, 0, t, torch.device("cpu")).expand(n_head, t, t)
        for h in range(n_head):
            expected = torch.tensor([[reference_allowed(cfg, kind, h, i, j, layer) for j in range(t)]
                                     for i in range(t)])
            assert torch.equal(mask[h], expected), f"layer {layer}, head {h}"
        assert pattern.mask(0, t, 0, t, torch.device("cpu")) is pattern.mask(0, t, 0, t, torch.device("cpu"))  # cached
        # a decoding step: one query at position 12 over keys 5..12 is the same rows and columns
        step = pattern.mask(12, 1, 5, 8, torch.device("cpu")).expand(n_head, 1, 8)
        assert torch.equal(step[:, 0], mask[:, 12, 5:13])
        allowed += mask.sum().item()
    assert ATTENTIONS[kind].mean_keys(cfg, t) == pytest.approx(allowed / (cfg.n_layer * n_head * t))


def test_dilated_head_groups():
    assert DilatedAttention.head_steps(8, 2) == [1, 1, 2, 2, 4, 4, 8, 8]
    assert DilatedAttention.head_steps(2, 3) == [1, 3]


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_every_kind_is_causal(kind, tiny_config):
    attn = CausalSelfAttention(dataclasses.replace(tiny_config, attention=kind)).eval()
    x = torch.randn(2, 12, tiny_config.n_embd)
    changed = x.clone()
    changed[:, 7] = torch.randn(2, tiny_config.n_embd)
    torch.testing.assert_close(attn(x)[:, :7], attn(changed)[:, :7])
    assert not torch.allclose(attn(x)[:, 7:], attn(changed)[:, 7:])


@pytest.mark.parametrize("kind", SOFTMAX_KINDS)
@pytest.mark.parametrize("alibi", [False, True])
def test_module_sdpa_equals_eager(kind, alibi, tiny_config):
    cfg = dataclasses.replace(tiny_config, attention=kind)
    sdpa = CausalSelfAttention(dataclasses.replace(cfg, attn_impl="sdpa"))
    eager = CausalSelfAttention(dataclasses.replace(cfg, attn_impl="eager"))
    eager.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 7, tiny_config.n_embd)
    slopes = alibi_slopes(cfg.n_head)
    kw = {"bias": lambda q_pos, k_pos: alibi_bias(slopes, q_pos, k_pos)} if alibi else {}
    torch.testing.assert_close(sdpa(x, **kw), eager(x, **kw))


@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
@pytest.mark.parametrize("chunk", [4, 64])  # several chunks, the last one padded; one chunk
def test_linear_causal_form_equals_the_quadratic_reference(feature_map, chunk, tiny_config, monkeypatch):
    monkeypatch.setattr(LinearAttention, "chunk", chunk)
    pattern = LinearAttention(dataclasses.replace(tiny_config, feature_map=feature_map))
    q, k, v = (torch.randn(2, 4, 11, 8) for _ in range(3))
    fast, none = pattern.attend(q, k, v, q_start=0, bias=None, dropout_p=0.0, need_weights=False)
    assert none is None
    phi = FEATURE_MAPS[feature_map]
    a = (phi(q) @ phi(k).transpose(-2, -1)).tril()  # plainly: causal φ(q)·φ(k), each row over its sum
    reference = (a / (a.sum(-1, keepdim=True) + LinearAttention.eps)) @ v
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
    # the last 3 queries against all keys (a cached decoding step) are the same rows
    tail, _ = pattern.attend(q[:, :, -3:], k, v, q_start=8, bias=None, dropout_p=0.0, need_weights=False)
    torch.testing.assert_close(tail, reference[:, :, -3:], rtol=1e-4, atol=1e-5)


def test_linear_attention_builds_no_t_by_t_tensor(tiny_config):
    pattern = LinearAttention(tiny_config)
    t = 200
    q, k, v = (torch.randn(1, 2, t, 4) for _ in range(3))
    shapes = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                shapes.append(tuple(out.shape))
            return out

    with Spy():
        pattern.attend(q, k, v, q_start=0, bias=None, dropout_p=0.0, need_weights=False)
    assert shapes and not any(s.count(t) >= 2 for s in shapes)


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
@pytest.mark.parametrize("bias,qk_norm", [(True, False), (False, True)])
def test_param_count_and_hf_names(n_kv_head, bias, qk_norm, tiny_config):
    cfg = dataclasses.replace(tiny_config, bias=bias, n_kv_head=n_kv_head, qk_norm=qk_norm)
    attn = CausalSelfAttention(cfg)
    assert CausalSelfAttention.num_params(cfg) == sum(p.numel() for p in attn.parameters())
    names = {n.split(".")[0] for n, _ in attn.named_parameters()}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj"} | ({"q_norm", "k_norm"} if qk_norm else set())
    assert attn.k_proj.weight.shape == (n_kv_head * 8, cfg.n_embd)


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_qkv_bias_puts_biases_on_q_k_v_only(n_kv_head, tiny_config):
    """Qwen2: biases on q, k and v, none on o_proj; with ``bias`` on, every projection has one anyway."""
    cfg = dataclasses.replace(tiny_config, bias=False, qkv_bias=True, n_kv_head=n_kv_head)
    attn = CausalSelfAttention(cfg)
    assert [n for n, _ in attn.named_parameters() if n.endswith("bias")] == ["q_proj.bias", "k_proj.bias",
                                                                             "v_proj.bias"]
    assert CausalSelfAttention.num_params(cfg) == sum(p.numel() for p in attn.parameters())
    both = dataclasses.replace(cfg, bias=True)
    assert CausalSelfAttention.num_params(both) == CausalSelfAttention.num_params(dataclasses.replace(both,
                                                                                                     qkv_bias=False))
    x = torch.randn(2, 6, cfg.n_embd)
    with torch.no_grad():
        torch.testing.assert_close(attn.eval()(x), attn.train()(x))  # one fused q/k/v matmul = three


@pytest.mark.parametrize("impl", ATTENTION_FUNCTIONS)
def test_query_pre_attn_scalar_sets_the_score_scale(impl, tiny_config):
    """Scores are q·k / √query_pre_attn_scalar (Gemma 2); equal to the head size it is the usual scale,
    and another value is the usual attention with q scaled by √(head size / scalar)."""
    hs = tiny_config.n_embd // tiny_config.n_head
    x = torch.randn(2, 7, tiny_config.n_embd)
    plain = CausalSelfAttention(dataclasses.replace(tiny_config, attn_impl=impl))
    same = CausalSelfAttention(dataclasses.replace(tiny_config, attn_impl=impl, query_pre_attn_scalar=hs))
    other = CausalSelfAttention(dataclasses.replace(tiny_config, attn_impl=impl, query_pre_attn_scalar=3))
    same.load_state_dict(plain.state_dict())
    other.load_state_dict(plain.state_dict())
    torch.testing.assert_close(same(x), plain(x))
    with torch.no_grad():
        plain.q_proj.weight.mul_((hs / 3) ** 0.5)
        plain.q_proj.bias.mul_((hs / 3) ** 0.5)
    torch.testing.assert_close(other(x), plain(x))


def test_local_global_layers(tiny_config):
    """Layer i sees every earlier key when (i + 1) % global_every == 0, else the last ``window``."""
    cfg = dataclasses.replace(tiny_config, attention="local_global", window=3, global_every=3, n_layer=7)
    windows = [ATTENTIONS["local_global"].for_layer(cfg, i).window for i in range(cfg.n_layer)]
    assert windows == [3, 3, None, 3, 3, None, 3]
    assert ATTENTIONS["local_global"].label(cfg) == "local_global (window 3, every 3rd layer global)"
    assert ATTENTIONS["local_global"].kv_bound(cfg) is None  # the global layers need every position


def test_grouped_query_attention_shares_each_kv_head_within_its_group(tiny_config):
    """GQA equals multi-head attention whose k/v projections repeat each kv head's rows."""
    gqa = CausalSelfAttention(dataclasses.replace(tiny_config, n_kv_head=2))
    mha = CausalSelfAttention(tiny_config)
    sd = gqa.state_dict()
    for name in ("k_proj", "v_proj"):
        w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
        sd[f"{name}.weight"] = repeat_kv(w.view(1, 2, 8, -1), 2).reshape(32, -1)
        sd[f"{name}.bias"] = repeat_kv(b.view(1, 2, 8, 1), 2).reshape(32)
    mha.load_state_dict(sd)
    x = torch.randn(2, 6, tiny_config.n_embd)
    torch.testing.assert_close(gqa(x), mha(x))


@pytest.mark.parametrize("head_dim,n_kv_head", [(12, 2), (6, None), (8, 1)])
@pytest.mark.parametrize("bias,qk_norm", [(True, False), (False, True)])
def test_explicit_head_size_shapes_the_projections(head_dim, n_kv_head, bias, qk_norm, tiny_config):
    """q_proj: n_embd → n_head·head_dim, k/v: n_embd → n_kv_head·head_dim, o_proj back to n_embd
    (transformers' Llama/Mistral layout); the output keeps the stream's width."""
    cfg = dataclasses.replace(tiny_config, head_dim=head_dim, n_kv_head=n_kv_head, bias=bias, qk_norm=qk_norm)
    attn = CausalSelfAttention(cfg)
    n_kv = n_kv_head or cfg.n_head
    assert attn.q_proj.weight.shape == (cfg.n_head * head_dim, cfg.n_embd)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (n_kv * head_dim, cfg.n_embd)
    assert attn.o_proj.weight.shape == (cfg.n_embd, cfg.n_head * head_dim)
    assert CausalSelfAttention.num_params(cfg) == sum(p.numel() for p in attn.parameters())
    x = torch.randn(2, 6, cfg.n_embd)
    with torch.no_grad():
        fused = attn.eval()(x)  # inference: one q/k/v matmul
    with torch.enable_grad():
        separate = attn(x)  # training's three matmuls
    assert fused.shape == (2, 6, cfg.n_embd)
    torch.testing.assert_close(fused, separate.detach())


def test_rope_rotates_the_explicit_head_size(tiny_config):
    from engine.nn.position import RotaryPosition

    cfg = dataclasses.replace(tiny_config, position="rope", head_dim=12)  # not 32 / 4 = 8
    cos, sin = RotaryPosition(cfg).rotary(0, 5, torch.device("cpu"))
    assert cos.shape[-1] == sin.shape[-1] == 12
