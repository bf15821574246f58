"""Quantisation: every method stays close to the fp32 model by a stated margin, int4 packing is
exact, the original model is never touched, and the table measures what it claims."""

import dataclasses
import json

import pytest
import torch
import torch.nn as nn

import engine.inference.quantize as quantize_module
from engine import build_model, parse_spec, train
from engine.data.datasets import load_data, read_stdlib
from engine.inference.quantize import (
    QUANTIZATIONS,
    Int4KernelLinear,
    Int4WeightLinear,
    Int8KernelLinear,
    Int8WeightLinear,
    decode_read_bytes,
    eval_windows,
    format_table,
    int4_kernel_problem,
    int8_kernel_problem,
    pack_int4,
    pack_int4_for_kernel,
    perplexity,
    quantization_table,
    quantize,
    unpack_int4,
    unpack_int4_from_kernel,
    weight_bytes,
)

# Stated tolerances on a char model trained 300 steps on Python source (measured when written:
# int8_weight 1.0 % / 0.01 %, int8_dynamic 7 % / 0.1 %, int4_weight 14 % / 0.2 %):
# the largest |logit difference| from fp32 as a fraction of the fp32 logits' standard deviation,
# and the held-out perplexity change in percent.
# w8a16 0.02 / 0.01 % and w4a16 0.17 / 0.2 % with their heads quantised (bf16 activations).
LOGIT_TOL = {"none": 0.0, "int8_weight": 0.03, "int8_dynamic": 0.15, "int4_weight": 0.30, "w8a16": 0.05,
             "w4a16": 0.30}
PPL_TOL_PCT = {"none": 0.0, "int8_weight": 0.5, "int8_dynamic": 1.0, "int4_weight": 3.0, "w8a16": 0.5, "w4a16": 3.0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("quant") / "source.txt"
    path.write_text(read_stdlib()[:60_000], encoding="utf-8")
    spec = parse_spec({
        "model": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 32, "dropout": 0.0},
        "data": {"source": "text", "path": str(path), "tokenizer": "char", "val_fraction": 0.1},
        "train": {"steps": 300, "batch_size": 16, "lr": 3e-3, "warmup_steps": 20, "eval_interval": 1000,
                  "eval_iters": 1, "sample_tokens": 0},
    })
    result = train(spec)
    return result.model.eval(), load_data(spec.data).val


def state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", list(QUANTIZATIONS))
def test_quantized_model_stays_within_the_stated_tolerance(method, trained):
    model, val = trained
    before = state(model)
    q = quantize(model, method)
    ref_ppl, ppl = (perplexity(m, val, block_size=32, n_tokens=4096) for m in (model, q))
    x, _ = eval_windows(val, block_size=32, n_tokens=4096)
    with torch.no_grad():
        ref, logits = model(x)[0], q(x)[0]
    assert (logits - ref).abs().max().item() <= LOGIT_TOL[method] * ref.std().item()
    assert abs(100 * (ppl / ref_ppl - 1)) <= PPL_TOL_PCT[method]
    # the original is untouched: same weights, same module types
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert type(model.h[0].attn.q_proj).__name__ == "Linear"
    assert q is not model and model.lm_head.weight is model.wte.weight
    if getattr(QUANTIZATIONS[method], "quantizes_head", False):  # the kernel methods quantise the head too
        assert isinstance(q.lm_head, QUANTIZATIONS[method]) and q.wte.weight.dtype == torch.float32
    else:
        assert q.lm_head.weight is q.wte.weight  # the tied head stays tied (and fp32)


@pytest.mark.parametrize("method", [m for m in QUANTIZATIONS if m != "none"])
@pytest.mark.parametrize("variant", [{}, {"ffn": "swiglu", "position": "rope", "tie_embeddings": False, "n_kv_head": 2},
                                     {"n_expert": 2, "top_k": 1, "capacity_factor": 0.0}])
def test_quantized_layers_run_their_own_kernels_in_every_path(method, variant, tiny_config):
    # at inference q/k/v (and SwiGLU's gate/up) are fused through .weight; a quantised copy must
    # still run its own forward there, so no-grad, grad and cached decoding all agree
    model = build_model(dataclasses.replace(tiny_config, **variant)).eval()
    q = quantize(model, method)
    leftover = [n for n, m in q.h.named_modules() if isinstance(m, nn.Linear) and not n.endswith("router")]
    assert not leftover  # every block linear is quantised; only MoE routers stay fp32
    idx = torch.randint(0, tiny_config.vocab_size, (2, 10))
    with torch.enable_grad():
        grad_path, _ = q(idx)
    with torch.inference_mode():
        infer_path, _ = q(idx)
    torch.testing.assert_close(infer_path, grad_path.detach(), rtol=1e-5, atol=1e-5)
    cached = q.generate(idx[:1], 5, temperature=0)
    uncached = q.generate(idx[:1], 5, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)


def test_int4_packing_round_trips_exactly():
    q = torch.randint(0, 16, (5, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    packed = pack_int4(q)
    assert packed.shape == (5, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), q)
    assert pack_int4(torch.tensor([3, 12])).item() == 3 | (12 << 4)  # element 0 in the low nibble
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(3, 5, dtype=torch.uint8))


@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_weights_on_the_grid_are_stored_exactly(symmetric):
    # weights that are already (u - zero) * scale for each group of 8 come back bit for bit
    g = torch.Generator().manual_seed(2)
    out, n_in, gs = 6, 32, 8
    scale = (torch.rand(out, n_in // gs, 1, generator=g) + 0.5).half().float()  # representable in fp16
    lowest = 1 if symmetric else 0  # symmetric groups use -7..7 around 8 (max|w| = 7 * scale)
    u = torch.randint(lowest, 16, (out, n_in // gs, gs), generator=g)
    u[..., 0], u[..., 1] = lowest, 15  # each group spans the whole range, so the fitted scale is this one
    zero = torch.full((out, n_in // gs, 1), 8) if symmetric else torch.randint(1, 15, (out, n_in // gs, 1), generator=g)
    w = ((u - zero) * scale).reshape(out, n_in)
    linear = nn.Linear(n_in, out, bias=True)
    linear.weight.data.copy_(w)
    q = Int4WeightLinear.from_linear(linear, group_size=gs, symmetric=symmetric)
    assert torch.equal(q.weight, w)
    x = torch.randn(3, n_in)
    torch.testing.assert_close(q(x), linear(x))


@pytest.mark.parametrize("bad", [0, 3, -4, 1.5, True])
def test_group_size_errors_are_clear(bad, tiny_config):
    with pytest.raises(ValueError, match=r"group_size must be an even integer ≥ 2"):
        quantize(build_model(tiny_config), "int4_weight", group_size=bad)


def test_a_group_size_that_does_not_divide_the_width_pads_the_last_group(tiny_config):
    model = build_model(dataclasses.replace(tiny_config, ffn_hidden=20)).eval()  # down_proj has 20 inputs
    q = quantize(model, "int4_weight", group_size=16)
    down = q.h[0].mlp.down_proj
    assert isinstance(down, Int4WeightLinear) and down.weight.shape == (32, 20)
    assert down.packed.shape == (32, 16) and down.scale.shape == (32, 2)  # 32 values stored, 2 groups
    assert (down.weight - model.h[0].mlp.down_proj.weight).abs().max() < 0.5 * down.scale.float().max()


def test_unknown_method_names_the_choices(tiny_config):
    with pytest.raises(ValueError, match=r"unknown quantization 'int2'; choose from \['none', 'int8_dynamic'"):
        quantize(build_model(tiny_config), "int2")


def test_weight_bytes_count_what_is_stored(tiny_config):
    model = build_model(tiny_config)  # tied: the head's weight is the embedding, counted once
    params = {p.data_ptr(): p for p in model.parameters()}
    assert weight_bytes(model) == sum(p.nbytes for p in params.values())
    q8 = quantize(model, "int8_weight")
    block_linears = [m for m in model.h.modules() if isinstance(m, nn.Linear)]
    saved = sum(m.weight.numel() * 4 - (m.weight.numel() + 4 * m.out_features) for m in block_linears)
    assert weight_bytes(q8) == weight_bytes(model) - saved
    assert all(isinstance(m, Int8WeightLinear) for m in [q8.h[0].attn.q_proj, q8.h[1].mlp.down_proj])
    q4 = quantize(model, "int4_weight", group_size=16, symmetric=True)  # half a byte + fp16 scale per 16
    saved4 = sum(m.weight.numel() * 4 - (m.weight.numel() // 2 + 2 * m.weight.numel() // 16) for m in block_linears)
    assert weight_bytes(q4) == weight_bytes(model) - saved4


def test_quantization_table_rows(trained):
    model, val = trained
    calls = []
    rows = quantization_table(model, val, n_tokens=2048, decode_tokens=8, repeats=1, on_progress=calls.append)
    json.dumps(rows)
    assert [r["method"] for r in rows] == list(QUANTIZATIONS) == calls
    by = {r["method"]: r for r in rows}
    assert by["none"]["weight_bytes_ratio"] == 1 and by["none"]["perplexity_change_pct"] == 0
    assert by["none"]["speedup"] == 1 and by["none"]["max_abs_logit_diff"] == 0
    assert by["int4_weight"]["weight_bytes"] < by["int8_weight"]["weight_bytes"] < by["none"]["weight_bytes"]
    for r in rows:
        assert abs(r["perplexity_change_pct"]) <= PPL_TOL_PCT[r["method"]]
        assert r["tokens_per_s"] > 0 and 0.9 <= r["top1_agreement"] <= 1
    assert "int4_weight" in format_table(rows)
    # the one-pass table agrees with measuring each model on its own
    q8 = quantize(model, "int8_weight")
    assert by["int8_weight"]["perplexity"] == pytest.approx(perplexity(q8, val, block_size=32, n_tokens=2048), abs=1e-4)
    x, _ = eval_windows(val, block_size=32, n_tokens=2048)
    with torch.no_grad():
        ref, out = model(x)[0], q8(x)[0]
    assert by["int8_weight"]["max_abs_logit_diff"] == pytest.approx((out - ref).abs().max().item(), abs=1e-5)
    assert by["none"]["logit_std"] == pytest.approx(ref.std().item(), abs=1e-3)


def test_quantization_table_rejects_other_families_and_methods(trained, tiny_config):
    model, val = trained
    with pytest.raises(ValueError, match="unknown quantization 'fp8'"):
        quantization_table(model, val, methods=("fp8",))
    encoder = build_model(dataclasses.replace(tiny_config, family="encoder"))
    with pytest.raises(ValueError, match="decoders only"):
        quantization_table(encoder, val)


def test_quantization_table_in_shorter_windows(trained):
    """``window``: perplexity in windows shorter than the context (a pretrained model's 8192 would
    be slow), as ``perplexity`` measures it with that block size; a window beyond the context or
    not a positive integer is refused."""
    model, val = trained
    rows = quantization_table(model, val, methods=("none", "int8_weight"), n_tokens=512, window=8, decode_tokens=4,
                              repeats=1)
    q8 = quantize(model, "int8_weight")
    assert rows[1]["perplexity"] == pytest.approx(perplexity(q8, val, block_size=8, n_tokens=512), abs=1e-4)
    assert rows[0]["perplexity"] == pytest.approx(perplexity(model, val, block_size=8, n_tokens=512), abs=1e-4)
    for bad in (0, 33, 2.5):
        with pytest.raises(ValueError, match="window must be an integer from 1 to the model's context of 32"):
            quantization_table(model, val, methods=("none",), window=bad)


# ---- the kernel methods (w8a16, w4a16): torch's CPU weight-only kernels, bf16 activations ----------

KERNEL_CLASSES = {"w8a16": Int8KernelLinear, "w4a16": Int4KernelLinear}


def linear_of(out: int, n_in: int, bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(n_in, out, bias=bias)
    linear.weight.data.normal_(0, 0.05)
    return linear


@pytest.mark.parametrize("method", list(KERNEL_CLASSES))
@pytest.mark.parametrize("shape", [(64, 96), (48, 64), (192, 576)])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_kernel_layers_equal_a_dequantised_matmul(method, shape, rows):
    # the kernel's result is the matmul of the bf16-rounded input with the layer's dequantised
    # weights, rounded to bf16 (its output dtype): within bf16's half-ulp plus fp32 summation order
    out, n_in = shape
    linear = linear_of(out, n_in, bias=True)
    layer = KERNEL_CLASSES[method].from_linear(linear, group_size=32)
    assert layer.fallback is None  # these shapes run the kernel
    x = torch.randn(2, rows, n_in)
    with torch.inference_mode():
        y = layer(x)
    ref = x.to(torch.bfloat16).float() @ layer.weight.t()  # fp32, before the bias
    assert y.shape == (2, rows, out) and y.dtype == torch.float32
    assert ((y - linear.bias - ref).abs() <= 2**-8 * ref.abs() + 1e-6).all()  # bf16's rounding of each output
    # and the dequantised weights are the linear's to within half a quantisation step (w4a16: plus
    # the bf16 rounding of its offsets, at most 8 steps * 2^-9)
    if method == "w8a16":
        step, slack = layer.scale.float()[:, None], 0.5
    else:
        step, slack = layer.scales_and_zeros[..., 0].float().t().repeat_interleave(32, dim=1)[:, :n_in], 0.5 + 8 / 512
    assert ((layer.weight - linear.weight).abs() <= slack * step * (1 + 1e-6)).all()


@pytest.mark.parametrize("out", [16, 48, 64, 80, 192])
def test_int4_kernel_packing_round_trips_exactly(out):
    # the kernel's layout depends on the CPU's vector width (64-row blocks on AVX-512, 32 on AVX2);
    # unpack_int4_from_kernel reads it off the op, so whatever the machine, unpacking gives the values back
    u = torch.randint(0, 16, (out, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    packed = pack_int4_for_kernel(u)
    assert packed.shape == (out, 48) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4_from_kernel(packed, 96), u)


def test_symmetric_w4a16_weights_on_its_grid_come_back_exactly():
    # symmetric groups (no offsets): a weight already on the grid is stored bit for bit, through
    # the kernel's layout (asymmetric offsets are bf16-rounded, so their grid is not closed)
    linear = linear_of(64, 64)
    layer = Int4KernelLinear.from_linear(linear, group_size=32, symmetric=True)
    assert (layer.scales_and_zeros[..., 1] == 0).all()
    on_grid = nn.Linear(64, 64, bias=False)
    on_grid.weight.data.copy_(layer.weight)
    assert torch.equal(Int4KernelLinear.from_linear(on_grid, group_size=32, symmetric=True).weight, layer.weight)


def test_kernel_fallbacks_say_why_and_compute_the_same(monkeypatch):
    # a layer the kernel cannot run says why and computes the kernel's arithmetic eagerly
    assert int4_kernel_problem(64, 64, 16) == "group_size 16: the CPU int4 kernel takes 32, 64, 128, 256"
    assert "out_features (40) is not a multiple of 16" in int4_kernel_problem(40, 64, 32)
    assert "in_features (20) is not a multiple of 16" in int8_kernel_problem(64, 20)
    assert "the layer is on meta" in int8_kernel_problem(64, 64, "meta")
    assert int4_kernel_problem(64, 96, 64) is None  # 96 inputs in groups of 64: padded to 128
    assert Int4KernelLinear.from_linear(linear_of(40, 64), group_size=32).fallback.startswith("out_features (40)")
    assert Int8KernelLinear.from_linear(linear_of(64, 20)).fallback.startswith("in_features (20)")
    x = torch.randn(3, 64)
    for cls, problem in ((Int8KernelLinear, "int8_kernel_problem"), (Int4KernelLinear, "int4_kernel_problem")):
        linear = linear_of(64, 64, bias=True)
        fast = cls.from_linear(linear, group_size=32)
        with monkeypatch.context() as m:
            m.setattr(quantize_module, "_aten_op", lambda name: None)  # a torch without the kernels
            assert f"has no aten._weight_int{cls.bits}" in getattr(quantize_module, problem)(64, 64, *(
                [32] if cls.bits == 4 else []))
            slow = cls.from_linear(linear, group_size=32)
        assert fast.fallback is None and "has no aten" in slow.fallback
        assert torch.equal(slow.weight, fast.weight) and fast.quantized_bytes() == slow.quantized_bytes()
        with torch.inference_mode():
            a, b = slow(x) - linear.bias, fast(x) - linear.bias
        assert ((a - b).abs() <= 2**-7 * a.abs() + 1e-6).all()  # each within bf16's rounding of the same sum


def test_group_sizes_the_kernel_does_not_take_still_work(tiny_config):
    model = build_model(dataclasses.replace(tiny_config, ffn_hidden=20)).eval()
    q = quantize(model, "w4a16", group_size=16)  # not a kernel group size: the eager fallback for every layer
    assert all(m.fallback.startswith("group_size 16") for m in q.modules() if isinstance(m, Int4KernelLinear))
    idx = torch.randint(0, tiny_config.vocab_size, (1, 6))
    with torch.no_grad():
        ref, out = model(idx)[0], q(idx)[0]
    assert (out - ref).abs().max() < 0.3 * ref.std() + 1e-3


def test_kernel_methods_quantise_the_head_unless_told_not_to(tiny_config):
    model = build_model(tiny_config)
    q = quantize(model, "w8a16")
    assert isinstance(q.lm_head, Int8KernelLinear) and q.wte.weight.dtype == torch.float32
    kept = quantize(model, "w8a16", head=False)
    assert kept.lm_head.weight is kept.wte.weight  # tied and fp32, as the other methods leave it
    assert isinstance(quantize(model, "int8_weight", head=True).lm_head, Int8WeightLinear)
    mixed = quantize(model, "w4a16", head="w8a16")  # int4 blocks, an int8 head
    assert isinstance(mixed.lm_head, Int8KernelLinear) and isinstance(mixed.h[0].mlp.up_proj, Int4KernelLinear)
    with pytest.raises(ValueError, match="unknown head quantization 'int2'"):
        quantize(model, "w4a16", head="int2")
    block = [m for m in model.h.modules() if isinstance(m, nn.Linear)]
    # int8 values and a bf16 scale per row; int4: half a byte per value, a bf16 scale and offset per group
    expect8 = sum(m.weight.numel() + 2 * m.out_features for m in block)
    assert weight_bytes(kept) == weight_bytes(model) - sum(4 * m.weight.numel() for m in block) + expect8
    q4 = quantize(model, "w4a16", head=False)
    expect4 = sum(m.weight.numel() // 2 + 4 * m.weight.numel() // 32 for m in block)
    assert weight_bytes(q4) == weight_bytes(model) - sum(4 * m.weight.numel() for m in block) + expect4


def test_decode_read_bytes_count_what_a_step_reads(tiny_config):
    model = build_model(dataclasses.replace(tiny_config, position="rope", n_kv_head=2))  # tied head
    cfg = model.config
    row = model.wte.weight[0].nbytes
    # tied: the head reads the whole table, so nothing is taken off; the KV cache adds 2 * layers * kv width
    kv = 2 * cfg.n_layer * 2 * cfg.head_size * 4
    assert decode_read_bytes(model) == weight_bytes(model)
    assert decode_read_bytes(model, positions=10, batch=3) == weight_bytes(model) + 30 * kv
    q = quantize(model, "w8a16")  # untied: the table is read one row per sequence
    assert decode_read_bytes(q, batch=2) == weight_bytes(q) - model.wte.weight.nbytes + 2 * row
