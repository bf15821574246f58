"""Post-training quantisation of a trained model's linear layers, and what it costs in quality.

    small = quantize(model, "int4_weight", group_size=32)    # a copy; ``model`` is untouched
    rows = quantization_table(model, val_tokens)              # one row per method, JSON-ready

``QUANTIZATIONS`` maps a method to the module class that replaces each ``nn.Linear`` of the
transformer blocks (attention q/k/v/o, cross-attention, the FFN's projections, every expert);
each class has ``from_linear(linear, *, group_size, symmetric)`` and the ``nn.Linear`` forward:

- "none": the layer itself (the fp32 reference row of the table);
- "int8_dynamic": torch's dynamically quantised linear (``torch.ao.nn.quantized.dynamic.Linear``,
  what ``torch.ao.quantization.quantize_dynamic`` installs), int8 weights per output channel and
  activations quantised per batch at run time; fbgemm/qnnpack kernels, so CPU only;
- "int8_weight": symmetric per-output-channel int8 weights (scale = max|w| / 127), dequantised
  to the activation dtype in every forward, activations untouched (LLM.int8()-style weight-only
  storage, without its outlier handling);
- "int4_weight": int4 weights in groups of ``group_size`` consecutive inputs of one output row,
  each group with its own fp16 scale (and, asymmetric by default, a uint8 zero point), two
  4-bit values packed per uint8 byte (the GPTQ/AWQ storage format, here with plain
  round-to-nearest instead of their error-correcting search); a width that ``group_size`` does
  not divide gets a zero-padded last group;
- "w8a16": int8 weights per output channel (a bf16 scale per row) and bf16 activations through
  torch's CPU weight-only kernel ``aten._weight_int8pack_mm``; the LM head quantised too;
- "w4a16": int4 weights in min-max groups of ``group_size`` (a bf16 scale and float offset per
  group: w = (u - 8) * scale + offset, the kernel's form) and bf16 activations through
  ``aten._weight_int4pack_mm_for_cpu``, the values packed in that kernel's layout
  (``pack_int4_for_kernel``; the layout depends on the CPU's vector width, so
  ``unpack_int4_from_kernel`` reads it off the op); the LM head quantised too
  (``quantize(..., head="w8a16")`` gives it int8 instead, ``head=False`` leaves it fp32).

The kernel methods compute each quantised matmul from bf16-rounded inputs with fp32 sums and a
bf16 result (fp32 activations would take the kernels' scalar path, 5-20 times slower); the
residual stream, norms and attention stay fp32. Where a kernel cannot run a layer (not on the
CPU, a width it does not take, a torch without it) the layer says why in ``fallback``
(``int8_kernel_problem``, ``int4_kernel_problem``) and computes the same arithmetic eagerly.

Left in full precision, on purpose, by the other methods: the token and position embeddings (a
lookup costs no matmul; quantising them only saves memory), the LM head (its weight is the
embedding when tied, and the logits are where quantisation error hurts most; GPTQ and AWQ keep
it too), norms, biases, and MoE routers (a small change there sends tokens to other experts).
The kernel methods quantise the head because at batch 1 decoding reads every weight once per
token, and SmolLM2-135M's tied 49,152 × 576 head is a fifth of its weights; the embedding table
stays fp32 for its lookups.

"int8_weight" and "int4_weight" are eager PyTorch (dequantise, then an fp32 matmul): on a CPU
they save memory, not time. "w8a16" and "w4a16" run fused kernels and decode faster than fp32
at batch 1 (``bench/quantization_smollm2.py``).
"""

from __future__ import annotations

import copy
import math
import time
import types
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F


class Int8DynamicLinear(nn.Module):
    """``nn.Linear`` through torch's dynamic int8 kernel: per-channel int8 weights, activations
    quantised on the fly from each batch's range."""

    bits = 8

    def __init__(self, inner: nn.Module, in_features: int, out_features: int):
        super().__init__()
        self.inner, self.in_features, self.out_features = inner, in_features, out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, group_size: int = 32, symmetric: bool = True):
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        if linear.weight.device.type != "cpu":
            raise ValueError(f"int8_dynamic runs on the CPU only (fbgemm/qnnpack kernels); the model is on "
                             f"{linear.weight.device}; choose int8_weight or int4_weight")
        plain = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        plain.load_state_dict({k: v.float() for k, v in linear.state_dict().items()})
        plain.qconfig = per_channel_dynamic_qconfig  # per output channel, as int8_weight
        with warnings.catch_warnings():  # torch >= 2.10 deprecates quantized tensors; they still work
            warnings.filterwarnings("ignore", message=".*quantized tensor creation.*", category=UserWarning)
            return cls(DynamicLinear.from_float(plain), linear.in_features, linear.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight().dequantize()  # for code that reads .weight; forward never does

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias()

    def quantized_bytes(self) -> int:
        """int8 values, one scale (float64) and one zero point (int64) per channel, and the bias,
        as torch stores them."""
        w = self.inner.weight()
        b = self.inner.bias()
        return w.numel() + w.q_per_channel_scales().nbytes + w.q_per_channel_zero_points().nbytes + (
            b.nbytes if b is not None else 0)


class Int8WeightLinear(nn.Module):
    """Symmetric per-output-channel int8 weights, dequantised in forward: w ≈ q * scale[row]."""

    bits = 8

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)  # (out, in) int8
        self.register_buffer("scale", scale)  # (out,) float32
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, group_size: int = 32, symmetric: bool = True):
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (out,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q, scale, linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qweight.to(x.dtype).mul_(self.scale.to(x.dtype)[:, None])  # (out, in), freed after the matmul
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def quantized_bytes(self) -> int:
        return self.qweight.nbytes + self.scale.nbytes + (self.bias.nbytes if self.bias is not None else 0)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Values 0..15 (..., 2n) -> uint8 (..., n): element 2i in the low nibble, 2i+1 in the high."""
    if q.size(-1) % 2:
        raise ValueError(f"int4 packing needs an even last dimension (got {q.size(-1)})")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (..., n) -> values 0..15 as uint8 (..., 2n); ``unpack_int4(pack_int4(q)) == q``."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


def check_group_size(group_size: int) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise ValueError(f"group_size must be an even integer ≥ 2 (two int4 values share a byte); got {group_size!r}")


class Int4WeightLinear(nn.Module):
    """Group-wise int4 weights: each run of ``group_size`` inputs of an output row has a scale
    and a zero point; w ≈ (u - zero) * scale with u in 0..15 packed two per byte. Symmetric
    groups use zero = 8 (u - 8 in -8..7, scale = max|w| / 7) and store no zero points. When
    ``group_size`` does not divide the input width (SwiGLU's hidden width often), the last group
    is padded with zeros, which are stored (and counted) like any other value."""

    bits = 4

    def __init__(self, packed, scale, zero, bias, group_size: int, in_features: int):
        super().__init__()
        self.out_features, self.in_features = packed.size(0), in_features
        self.group_size = group_size
        self.register_buffer("packed", packed)  # (out, in_padded / 2) uint8
        self.register_buffer("scale", scale)  # (out, in_padded / group_size) float16
        self.register_buffer("zero", zero)  # (out, in_padded / group_size) uint8, or None when symmetric
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, group_size: int = 32, symmetric: bool = False):
        check_group_size(group_size)
        out, n_in = linear.weight.shape
        n_pad = -(-n_in // group_size) * group_size
        w = F.pad(linear.weight.detach().float(), (0, n_pad - n_in))
        w = w.reshape(out, n_pad // group_size, group_size)  # (out, groups, g)
        if symmetric:
            scale = (w.abs().amax(dim=-1) / 7).clamp(min=1e-6).half()  # fp16 scales, as GPTQ stores them
            zero = None
            q = torch.round(w / scale.float()[..., None]).clamp(-8, 7) + 8
        else:
            # the range always holds 0, so zero weights (and the zero point) are exact
            lo, hi = w.amin(dim=-1).clamp(max=0), w.amax(dim=-1).clamp(min=0)
            scale = ((hi - lo) / 15).clamp(min=1e-6).half()
            zero = torch.round(-lo / scale.float()).clamp(0, 15).to(torch.uint8)
            q = (torch.round(w / scale.float()[..., None]) + zero[..., None]).clamp(0, 15)
        return cls(pack_int4(q.reshape(out, n_pad)), scale, zero, linear.bias, group_size, n_in)

    @property
    def weight(self) -> torch.Tensor:
        # unpacked straight into one float buffer and scaled in place: a third faster than unpack_int4
        # and out-of-place arithmetic at these sizes, where dequantising is most of a layer's time
        p = self.packed
        w = torch.empty(*p.shape, 2, dtype=torch.float32, device=p.device)  # (out, in_padded / 2, 2)
        w[..., 0], w[..., 1] = p & 0xF, p >> 4
        w = w.view(self.out_features, -1, self.group_size)  # (out, groups, g)
        w.sub_(8 if self.zero is None else self.zero[..., None]).mul_(self.scale[..., None])
        w = w.view(self.out_features, -1)
        return w if w.size(1) == self.in_features else w[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def quantized_bytes(self) -> int:
        zero = self.zero.nbytes if self.zero is not None else 0
        return self.packed.nbytes + self.scale.nbytes + zero + (self.bias.nbytes if self.bias is not None else 0)


# ---- weight-only kernels: int8/int4 weights, bf16 activations, torch's CPU kernels ----------------

INT4_KERNEL_GROUPS = (32, 64, 128, 256)  # the group sizes aten._weight_int4pack_mm_for_cpu takes
KERNEL_DTYPE = torch.bfloat16  # the activations the kernels read (fp32 ones take a scalar path: 5-20x slower)


def _aten_op(name: str):
    try:
        return getattr(torch.ops.aten, name)
    except (AttributeError, RuntimeError):
        return None


def int8_kernel_problem(out_features: int, in_features: int, device: torch.device | str = "cpu") -> str | None:
    """Why ``aten._weight_int8pack_mm`` cannot run an (out, in) int8 layer on ``device``, or
    None when it can. Widths that are not a multiple of 16 are refused: torch 2.13's kernel
    reads 16 inputs at a time and returns wrong numbers or crashes on the others (measured)."""
    if _aten_op("_weight_int8pack_mm") is None:
        return f"torch {torch.__version__} has no aten._weight_int8pack_mm"
    if torch.device(device).type != "cpu":
        return f"the layer is on {torch.device(device)}; the int8 weight-only kernel used here is torch's CPU one"
    if in_features % 16:
        return f"in_features ({in_features}) is not a multiple of 16, which the CPU int8 kernel needs"
    return None


def int4_kernel_problem(out_features: int, in_features: int, group_size: int,
                        device: torch.device | str = "cpu") -> str | None:
    """Why ``aten._weight_int4pack_mm_for_cpu`` cannot run an (out, in) int4 layer with groups
    of ``group_size`` on ``device``, or None when it can (an input width that the group size
    does not divide is zero-padded, as ``Int4WeightLinear`` pads it)."""
    for op in ("_weight_int4pack_mm_for_cpu", "_convert_weight_to_int4pack_for_cpu"):
        if _aten_op(op) is None:
            return f"torch {torch.__version__} has no aten.{op}"
    if torch.device(device).type != "cpu":
        return f"the layer is on {torch.device(device)}; the int4 weight-only kernel used here is torch's CPU one"
    if group_size not in INT4_KERNEL_GROUPS:
        return f"group_size {group_size}: the CPU int4 kernel takes {', '.join(map(str, INT4_KERNEL_GROUPS))}"
    if out_features % 16:
        return f"out_features ({out_features}) is not a multiple of 16, which the CPU int4 kernel needs"
    return None


def _kernel_nibble_sources(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``aten._convert_weight_to_int4pack_for_cpu`` of an (n, k) tensor: the flat source index
    of the value in each packed byte's low and high nibble. The layout depends on the CPU's
    vector width (blocks of 64 rows with AVX-512, 32 with AVX2), so it is read off the op itself:
    each run packs one hex digit of every element's index."""
    index = torch.arange(n * k, dtype=torch.int64)
    low = torch.zeros(n * k // 2, dtype=torch.int64)
    high = torch.zeros_like(low)
    for shift in range(0, max(1, (n * k - 1).bit_length()), 4):
        digits = ((index >> shift) & 15).view(n, k).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(digits, 2).flatten().long()
        low |= (packed & 15) << shift
        high |= (packed >> 4) << shift
    return low, high


def _bf16_at_least(value: torch.Tensor) -> torch.Tensor:
    """``value`` rounded to the nearest bfloat16 that is not smaller: a scale the largest weight
    of its row or group does not overflow (it would clip by up to 2^-9 of the range otherwise)."""
    rounded = value.to(KERNEL_DTYPE)
    up = torch.nextafter(rounded, torch.full_like(rounded, math.inf))
    return torch.where(rounded.float() < value, up, rounded)


def pack_int4_for_kernel(u: torch.Tensor) -> torch.Tensor:
    """Values 0..15 (n, k) -> the CPU int4 kernel's packed uint8 (n, k / 2)."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32).contiguous(), 2)


def unpack_int4_from_kernel(packed: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of ``pack_int4_for_kernel``: uint8 (n, k / 2) -> values 0..15 as uint8 (n, k)."""
    n = packed.size(0)
    low, high = _kernel_nibble_sources(n, k)
    flat = packed.flatten()
    u = torch.empty(n * k, dtype=torch.uint8)
    u[low], u[high] = flat & 15, flat >> 4
    return u.view(n, k)


class Int8KernelLinear(nn.Module):
    """int8 weights per output channel, bf16 activations, torch's CPU kernel (w8a16)."""

    bits = 8
    quantizes_head = True  # the LM head too: at batch 1 its 49,152 × 576 matrix is a fifth of SmolLM2's reads

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, fallback: str | None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)  # (out, in) int8
        self.register_buffer("scale", scale)  # (out,) bfloat16: what the kernel multiplies by
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.fallback = fallback  # None: the kernel runs; else why not (the same arithmetic runs in eager fp32)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, group_size: int = 32, symmetric: bool = True):
        w = linear.weight.detach().float()
        # the scale is rounded (up) to bf16 first and the weights quantised against that rounded
        # scale, so q * scale is exactly the weight the kernel multiplies by
        scale = _bf16_at_least((w.abs().amax(dim=1) / 127).clamp(min=1e-12))
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        fallback = int8_kernel_problem(*w.shape, w.device)
        return cls(q, scale, linear.bias, fallback)

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(KERNEL_DTYPE)
        if self.fallback is None and x.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scale)
        else:  # the kernel's arithmetic: bf16 inputs, fp32 products and sums, a bf16 result
            y = F.linear(x2.float(), self.weight).to(KERNEL_DTYPE)
        y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def quantized_bytes(self) -> int:
        return self.qweight.nbytes + self.scale.nbytes + (self.bias.nbytes if self.bias is not None else 0)


class Int4KernelLinear(nn.Module):
    """Group-wise int4 weights, bf16 activations, torch's CPU kernel (w4a16)."""

    bits = 4
    quantizes_head = True

    def __init__(self, packed, scales_and_zeros, bias, group_size: int, in_features: int, fallback: str | None):
        super().__init__()
        self.out_features, self.in_features = packed.size(0), in_features
        self.group_size = group_size
        self.padded_in = 2 * packed.size(1)
        self.register_buffer("packed", packed)  # (out, padded_in / 2) uint8: the kernel's layout, or pack_int4's
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # (groups, out, 2) bfloat16
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.fallback = fallback  # None: ``packed`` is in the kernel's layout and it runs; else why not

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, group_size: int = 32, symmetric: bool = False):
        check_group_size(group_size)
        out, n_in = linear.weight.shape
        n_pad = -(-n_in // group_size) * group_size
        w = F.pad(linear.weight.detach().float(), (0, n_pad - n_in)).reshape(out, n_pad // group_size, group_size)
        # the kernel computes w = (u - 8) * scale + offset per group, scale and offset in bf16; both
        # are rounded first and the values chosen against the rounded scale
        if symmetric:
            scale = _bf16_at_least((w.abs().amax(dim=-1) / 7).clamp(min=1e-6))
            u = torch.round(w / scale.float()[..., None]).clamp(-8, 7) + 8
            offset = torch.zeros_like(scale)
        else:
            # min-max groups, the offset a float (as llama.cpp's Q4_1 and torchao's float zero point):
            # the 16 levels span exactly the group's range, which need not hold 0 (int4_weight's
            # integer zero point needs it to, and spends levels on it)
            lo, hi = w.amin(dim=-1), w.amax(dim=-1)
            scale = _bf16_at_least(((hi - lo) / 15).clamp(min=1e-6))
            offset = (lo + 8 * scale.float()).to(KERNEL_DTYPE)  # w = (u - 8) * scale + offset
            # the values are chosen against the rounded offset, so its rounding is not added to theirs
            u = (torch.round((w - offset.float()[..., None]) / scale.float()[..., None]) + 8).clamp(0, 15)
        u = u.reshape(out, n_pad).to(torch.uint8)
        sz = torch.stack((scale, offset), dim=-1).transpose(0, 1).contiguous()  # (groups, out, 2)
        fallback = int4_kernel_problem(out, n_in, group_size, linear.weight.device)
        packed = pack_int4_for_kernel(u) if fallback is None else pack_int4(u)
        return cls(packed, sz, linear.bias, group_size, n_in, fallback)

    def values(self) -> torch.Tensor:
        """The stored 4-bit values 0..15 (out, padded_in) as uint8, whichever layout holds them."""
        if self.fallback is None:
            return unpack_int4_from_kernel(self.packed.cpu(), self.padded_in).to(self.packed.device)
        return unpack_int4(self.packed)

    def _dequantize(self, u: torch.Tensor) -> torch.Tensor:
        sz = self.scales_and_zeros.float()  # (groups, out, 2)
        w = (u.float() - 8).view(self.out_features, -1, self.group_size)
        w = w * sz[..., 0].t()[..., None] + sz[..., 1].t()[..., None]
        return w.view(self.out_features, -1)[:, : self.in_features]

    @property
    def weight(self) -> torch.Tensor:
        return self._dequantize(self.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(KERNEL_DTYPE)
        if self.fallback is None and x.device.type == "cpu":
            if self.padded_in != self.in_features:
                x2 = F.pad(x2, (0, self.padded_in - self.in_features))
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.packed, self.group_size,
                                                            self.scales_and_zeros)
        else:  # the kernel's arithmetic: bf16 inputs, fp32 products and sums, a bf16 result
            y = F.linear(x2.float(), self.weight).to(KERNEL_DTYPE)
        y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def quantized_bytes(self) -> int:
        return self.packed.nbytes + self.scales_and_zeros.nbytes + (self.bias.nbytes if self.bias is not None else 0)


# method -> the class that replaces each block nn.Linear (None: the model as it is)
QUANTIZATIONS = {
    "none": None,
    "int8_dynamic": Int8DynamicLinear,
    "int8_weight": Int8WeightLinear,
    "int4_weight": Int4WeightLinear,
    "w8a16": Int8KernelLinear,
    "w4a16": Int4KernelLinear,
}
QUANTIZED = (Int8DynamicLinear, Int8WeightLinear, Int4WeightLinear, Int8KernelLinear, Int4KernelLinear)


def _separate_qkv(self, x: torch.Tensor) -> torch.Tensor:
    # engine.cache.joint_linear concatenates the .weight of q/k/v; a quantised layer must run its own forward
    return torch.cat((self.q_proj(x), self.k_proj(x), self.v_proj(x)), dim=-1)


def _separate_gate_up(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(self.activation(self.gate_proj(x)) * self.up_proj(x))  # dropout: eval only


def _targets(model: nn.Module):
    """(name, parent, attribute, linear) for every nn.Linear inside the block stacks, routers excepted."""
    stacks = [(n, m) for n, m in model.named_children() if n in ("h", "enc_h") and isinstance(m, nn.ModuleList)]
    for stack_name, stack in stacks:
        for name, parent in stack.named_modules(prefix=stack_name):
            for attr, child in parent.named_children():
                if isinstance(child, nn.Linear) and attr != "router":
                    yield f"{name}.{attr}", parent, attr, child


def quantize(model: nn.Module, method: str, *, group_size: int = 32, symmetric: bool = False,
             head: bool | str | None = None) -> nn.Module:
    """A deep copy of ``model`` in eval mode whose block linears are quantised by ``method``
    (a key of ``QUANTIZATIONS``); ``model`` itself is left as it was. ``group_size`` and
    ``symmetric`` apply to the int4 methods (int8 is always symmetric per channel). ``head``:
    quantise a decoder's LM head too (default: the method's ``quantizes_head``, True for the
    kernel methods "w8a16" and "w4a16"), or the name of another method for it ("w4a16" with
    ``head="w8a16"``: int4 blocks, an int8 head); a tied head is then untied, the embedding
    staying fp32 for its lookups."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {method!r}; choose from {list(QUANTIZATIONS)}")
    cls = QUANTIZATIONS[method]
    if isinstance(head, str):
        if QUANTIZATIONS.get(head) is None:
            raise ValueError(f"unknown head quantization {head!r}; choose from {list(QUANTIZATIONS)[1:]}")
        head_cls = QUANTIZATIONS[head]
    else:
        head_cls = cls if (getattr(cls, "quantizes_head", False) if head is None else head) else None
    if any(c is not None and c.bits == 4 for c in (cls, head_cls)):
        check_group_size(group_size)
    q = copy.deepcopy(model).eval()
    if cls is None:
        return q
    for _, parent, attr, linear in list(_targets(q)):
        setattr(parent, attr, cls.from_linear(linear, group_size=group_size, symmetric=symmetric))
    if head_cls is not None and isinstance(getattr(q, "lm_head", None), nn.Linear):
        q.lm_head = head_cls.from_linear(q.lm_head, group_size=group_size, symmetric=symmetric)
    for module in q.modules():
        if hasattr(module, "project_qkv") and isinstance(getattr(module, "q_proj", None), QUANTIZED):
            module.project_qkv = types.MethodType(_separate_qkv, module)
        if isinstance(getattr(module, "gate_proj", None), QUANTIZED):  # SwiGLU/GeGLU fuse gate and up
            module.forward = types.MethodType(_separate_gate_up, module)
    return q


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANTIZED) for m in model.modules())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every weight as stored: parameters (a tied tensor once) plus each quantised
    layer's integer values, scales and zero points. Buffers that are not weights (RoPE tables,
    masks) are left out."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.nbytes
    for m in model.modules():
        if isinstance(m, QUANTIZED):
            total += m.quantized_bytes() - (m.bias.nbytes if isinstance(m.bias, nn.Parameter) else 0)
    return total


def decode_read_bytes(model: nn.Module, positions: int = 0, batch: int = 1) -> int:
    """Bytes one KV-cached decoding step of a decoder reads at least, the memory traffic that
    bounds its speed at small batch: every weight as stored (``weight_bytes``) except the token
    and position tables, of which it reads ``batch`` rows (a tied LM head still reads the whole
    token table: it is the head's matrix), plus the keys and values of ``positions`` cached
    positions per sequence (as fp32). Activations, being small and in cache, are left out."""
    cfg = model.config
    tables = [model.wte.weight]
    if type(model.wpe).__name__ == "LearnedPosition":
        tables.append(model.wpe.weight)
    head = getattr(getattr(model, "lm_head", None), "weight", None)
    total = weight_bytes(model)
    for t in tables:
        if not (isinstance(head, torch.Tensor) and head.data_ptr() == t.data_ptr()):
            total -= t.nbytes - batch * t[0].nbytes
    kv = 2 * cfg.n_layer * (cfg.n_kv_head or cfg.n_head) * cfg.head_size * positions * batch * 4
    return total + kv


def eval_windows(tokens: torch.Tensor, *, block_size: int, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets (N, block_size) from the first ``n_tokens`` predictions of
    ``tokens`` (1-D), in non-overlapping windows."""
    n = min(n_tokens, len(tokens) - 1) // block_size * block_size
    if n < block_size:
        raise ValueError(f"perplexity needs more than {block_size} held-out tokens (got {len(tokens)})")
    return tokens[:n].long().view(-1, block_size), tokens[1 : n + 1].long().view(-1, block_size)


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, *, block_size: int, n_tokens: int, batch_size: int = 16) -> float:
    """exp(mean next-token loss) over ``eval_windows(tokens, ...)``."""
    x, y = eval_windows(tokens, block_size=block_size, n_tokens=n_tokens)
    device = next(model.parameters()).device
    nll = sum(F.cross_entropy(model(x[i : i + batch_size].to(device))[0].float().flatten(0, 1),
                              y[i : i + batch_size].to(device).flatten(), reduction="sum").item()
              for i in range(0, x.size(0), batch_size))
    return math.exp(nll / y.numel())


@torch.no_grad()
def decode_speed(model: nn.Module, prompt: torch.Tensor, new_tokens: int, repeats: int = 3) -> float:
    """Greedy KV-cached decoding tokens/s at batch 1 (``model.generate``; fastest of ``repeats``)."""
    model.generate(prompt, 2, temperature=0)  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate(prompt, new_tokens, temperature=0)
        best = min(best, time.perf_counter() - t0)
    return new_tokens / best


@torch.no_grad()
def quantization_table(model: nn.Module, val_tokens: torch.Tensor, *, methods=tuple(QUANTIZATIONS),
                       n_tokens: int = 8192, group_size: int = 32, symmetric: bool = False,
                       decode_tokens: int = 64, prompt_tokens: int = 16, repeats: int = 3, batch_size: int = 16,
                       window: int | None = None, on_progress=None) -> list[dict]:
    """One row per method for a decoder: weight bytes (and ratio to "none"), held-out perplexity
    on ``n_tokens`` of ``val_tokens`` (1-D token ids) and its change in percent, greedy decode
    tokens/s (and speedup over "none"), the largest |logit difference| from "none" beside the
    reference logits' standard deviation (the scale to read it against) and how often both pick
    the same top token. Every model reads the same batch in turn, so only one batch of logits
    per model is ever held (vocabularies can be large). A method that cannot run (int8_dynamic
    off the CPU) gets a row with an "error" instead. ``on_progress(method)`` is called as each
    method's decoding speed is measured. Perplexity is measured in non-overlapping windows of
    ``window`` tokens (default: the model's context; a shorter one keeps a long-context model's
    table cheap)."""
    if model.config.family != "decoder":
        raise ValueError("quantization_table measures next-token perplexity: decoders only "
                         f"(got {model.config.family!r})")
    unknown = [m for m in methods if m not in QUANTIZATIONS]
    if unknown:
        raise ValueError(f"unknown quantization {unknown[0]!r}; choose from {list(QUANTIZATIONS)}")
    device = next(model.parameters()).device
    fp_bits = 8 * next(model.parameters()).element_size()
    models, rows = {}, {}
    for method in ["none", *[m for m in methods if m != "none"]]:
        try:
            models[method] = quantize(model, method, group_size=group_size, symmetric=symmetric)
        except ValueError as e:
            rows[method] = {"method": method, "bits": QUANTIZATIONS[method].bits, "error": str(e)}
    block = model.config.block_size
    if window is not None and not (isinstance(window, int) and 1 <= window <= block):
        raise ValueError(f"window must be an integer from 1 to the model's context of {block} (got {window!r})")
    x, y = eval_windows(val_tokens, block_size=window or block, n_tokens=n_tokens)
    nll, diff, agree = dict.fromkeys(models, 0.0), dict.fromkeys(models, 0.0), dict.fromkeys(models, 0)
    s1 = s2 = 0.0  # sums of the reference logits and their squares, for their standard deviation
    for i in range(0, x.size(0), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device).flatten()
        ref = models["none"](xb)[0].float().flatten(0, 1)  # (b * T, vocab)
        s1, s2 = s1 + ref.sum().item(), s2 + ref.double().square().sum().item()
        for method, q in models.items():
            out = ref if method == "none" else q(xb)[0].float().flatten(0, 1)
            nll[method] += F.cross_entropy(out, yb, reduction="sum").item()
            diff[method] = max(diff[method], (out - ref).abs().max().item())
            agree[method] += (out.argmax(-1) == ref.argmax(-1)).sum().item()
    count = ref.size(-1) * y.numel()
    logit_std = math.sqrt(max(s2 / count - (s1 / count) ** 2, 0.0))
    prompt = val_tokens[:prompt_tokens].long().view(1, -1).to(device)
    if not model.wpe.extrapolates:  # learned positions: stay inside the context
        decode_tokens = min(decode_tokens, model.config.block_size - prompt.size(1))
    ppl = {m: math.exp(v / y.numel()) for m, v in nll.items()}
    ref_bytes, ref_speed = weight_bytes(models["none"]), None
    for method, q in models.items():
        if on_progress:
            on_progress(method)
        speed = decode_speed(q, prompt, decode_tokens, repeats)
        ref_speed = ref_speed or speed
        nbytes = weight_bytes(q)
        rows[method] = {
            "method": method,
            "bits": fp_bits if method == "none" else QUANTIZATIONS[method].bits,
            "group_size": group_size if QUANTIZATIONS[method] is not None and QUANTIZATIONS[method].bits == 4 else None,
            "weight_bytes": nbytes,
            "weight_bytes_ratio": round(nbytes / ref_bytes, 4),
            "perplexity": round(ppl[method], 4),
            "perplexity_change_pct": round(100 * (ppl[method] / ppl["none"] - 1), 3),
            "tokens_per_s": round(speed, 1),
            "speedup": round(speed / ref_speed, 3),
            "max_abs_logit_diff": round(diff[method], 5),
            "logit_std": round(logit_std, 4),
            "top1_agreement": round(agree[method] / y.numel(), 4),
        }
    return [rows[m] for m in methods]


def format_table(rows: list[dict]) -> str:
    """The table as fixed-width text, to print."""
    head = (f"{'method':14s}{'bits':>5s}{'weights':>12s}{'ratio':>7s}{'ppl':>9s}{'Δppl %':>8s}{'tok/s':>9s}"
            f"{'speedup':>8s}")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:14s}{r['bits']:>5d}  {r['error']}")
            continue
        lines.append(f"{r['method']:14s}{r['bits']:>5d}{r['weight_bytes']:>12,d}{r['weight_bytes_ratio']:>7.3f}"
                     f"{r['perplexity']:>9.3f}{r['perplexity_change_pct']:>+8.2f}{r['tokens_per_s']:>9.0f}"
                     f"{r['speedup']:>8.2f}")
    return "\n".join(lines)
