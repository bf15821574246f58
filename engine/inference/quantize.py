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
  not divide gets a zero-padded last group.

Left in full precision, on purpose: the token and position embeddings (a lookup costs no
matmul; quantising them only saves memory), the LM head (its weight is the embedding when tied,
and the logits are where quantisation error hurts most; GPTQ and AWQ keep it too), norms,
biases, and MoE routers (a small change there sends tokens to other experts).

Weight-only kernels here are eager PyTorch (dequantise, then an fp32 matmul), so on a CPU they
save memory but not time; fused int4/int8 GPU kernels are what make them faster. The table
reports what this code measures, not what such kernels would do.
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


# method -> the class that replaces each block nn.Linear (None: the model as it is)
QUANTIZATIONS = {
    "none": None,
    "int8_dynamic": Int8DynamicLinear,
    "int8_weight": Int8WeightLinear,
    "int4_weight": Int4WeightLinear,
}
QUANTIZED = (Int8DynamicLinear, Int8WeightLinear, Int4WeightLinear)


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


def quantize(model: nn.Module, method: str, *, group_size: int = 32, symmetric: bool = False) -> nn.Module:
    """A deep copy of ``model`` in eval mode whose block linears are quantised by ``method``
    (a key of ``QUANTIZATIONS``); ``model`` itself is left as it was. ``group_size`` and
    ``symmetric`` apply to "int4_weight" (int8 is always symmetric per channel)."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {method!r}; choose from {list(QUANTIZATIONS)}")
    cls = QUANTIZATIONS[method]
    if cls is Int4WeightLinear:
        check_group_size(group_size)
    q = copy.deepcopy(model).eval()
    if cls is None:
        return q
    for _, parent, attr, linear in list(_targets(q)):
        setattr(parent, attr, cls.from_linear(linear, group_size=group_size, symmetric=symmetric))
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
            "group_size": group_size if method == "int4_weight" else None,
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
