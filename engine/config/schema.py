"""Job configuration: three small dataclasses (model, data, train) bundled in a ``JobSpec``.

Each field carries its form metadata (label, help, bounds, registry of choices), so one
declaration drives validation, ``field_specs()`` for the web form and the error messages.
``validate()`` raises a ``ConfigError`` listing every problem, keyed by dotted field name
("model.n_head"); ``engine.training.spec.parse_spec`` adds the checks that need the data.
Nothing here imports torch: choice fields name their registries, resolved when needed.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from typing import ClassVar, Self

from .errors import ConfigError

# The registries of the choice fields, named "module:attribute" and imported only when their
# keys are needed (``resolve``), so that reading or writing a config imports no torch and no
# layer above this one (as transformers' configuration_*.py and LitGPT's config.py). Each name
# mirrors the registry it points to.
FAMILIES = "engine.models.families:FAMILIES"
NORMS = "engine.nn.norm:NORMS"
NORM_PLACEMENTS = "engine.nn.norm:NORM_PLACEMENTS"
POSITIONS = "engine.nn.position:POSITIONS"
ROPE_SCALINGS = "engine.nn.position:ROPE_SCALINGS"
ATTENTIONS = "engine.nn.attention:ATTENTIONS"
FEATURE_MAPS = "engine.nn.attention:FEATURE_MAPS"
ATTENTION_FUNCTIONS = "engine.nn.attention:ATTENTION_FUNCTIONS"
FFNS = "engine.nn.ffn:FFNS"
DEVICES = "engine.nn.device:DEVICES"
TOKENIZERS = "engine.data.tokenizers:TOKENIZERS"
DATA_SOURCES = "engine.data.datasets:DATA_SOURCES"
TASKS = "engine.data.tasks:TASKS"
OPTIMIZERS = "engine.training.optim:OPTIMIZERS"
SCHEDULES = "engine.training.optim:SCHEDULES"
WSD_DECAYS = "engine.training.optim:WSD_DECAYS"
NONFINITE_ACTIONS = "engine.training.optim:NONFINITE_ACTIONS"
TRAINING_OBJECTIVES = "engine.training.objectives:TRAINING_OBJECTIVES"


def resolve(ref: str):
    """The object a "package.module:attribute" reference names, its module imported now."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)

MAX_SEED = 2**32 - 1

# ---------------------------------------------------------------------------- field declarations


def _field(kind, default, label, help, *, min=None, max=None, min_open=False, max_open=False,
           step=None, choices=None, optional=False, form=True, show_if=None):
    meta = dict(kind=kind, label=label, help=help, min=min, max=max, min_open=min_open, max_open=max_open,
                step=step, choices=choices, optional=optional, form=form, show_if=show_if)
    return field(default=default, metadata=meta)


def integer(default, label, help, **kw):
    return _field("int", default, label, help, **kw)


def number(default, label, help, **kw):
    return _field("float", default, label, help, **kw)


def boolean(default, label, help, **kw):
    return _field("bool", default, label, help, **kw)


def choice(default, registry, label, help, **kw):
    return _field("choice", default, label, help, choices=registry, **kw)


def string(default, label, help, **kw):
    return _field("str", default, label, help, **kw)


# ---------------------------------------------------------------------------- the three sections


class Section:
    """What the three config dataclasses share: JSON round-trip and validation."""

    section: ClassVar[str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        """Build from JSON (missing keys take defaults, values are coerced to the field types);
        raises ``ConfigError`` for unknown keys and untypeable values. Ranges and choices are
        checked by ``validate()`` and ``parse_spec``, so a half-typed form can still be analysed."""
        cfg, errors = _parse_section(cls, d, check_values=False)
        if errors:
            raise ConfigError(errors)
        return cfg

    def validate(self, *, upper_bounds: bool = True) -> None:
        """Raise ``ConfigError`` listing every out-of-range value, unknown choice and
        inconsistent pair of fields (the checks that do not need the data). Without
        ``upper_bounds`` whole-number fields have no maximum: a 405B model is beyond what the
        composer trains, but a fine thing to analyse."""
        _, errors = _parse_section(type(self), self.to_dict(), check_values=True, upper_bounds=upper_bounds)
        if errors:
            raise ConfigError(errors)


def _attention(question: str, **kw):
    """A help text or ``show_if`` list asked of the attention registry when ``field_specs`` runs,
    so a kind registered at run time is described and shown its fields."""
    def ask():
        return resolve(f"engine.nn.attention:{question}")(**kw)
    return ask


SOFTMAX = _attention("attention_kinds", has_scores=True)  # the attention patterns with scores
MOE = {"model.n_expert": {"min": 1}}  # show_if of the fields that only matter with experts
ENCODER = {"model.family": ["encoder"]}
ENCODER_DECODER = {"model.family": ["encoder_decoder"]}


@dataclass
class ModelConfig(Section):
    section: ClassVar[str] = "model"

    family: str = choice(
        "decoder", FAMILIES, "Family",
        "Decoder-only (GPT: causal, predicts the next token), encoder-only (BERT: bidirectional, fills in masked "
        "tokens; cannot generate) or encoder-decoder (T5: an encoder reads the input, a causal decoder writes the "
        "output through cross-attention; about twice the layers, plus a cross-attention per decoder layer).")
    n_layer: int = integer(4, "Layers", "Number of transformer blocks (the encoder's, for encoder-decoder).",
                           min=1, max=64)
    n_decoder_layer: int | None = integer(
        None, "Decoder layers",
        "Blocks in the decoder (empty = as many as the encoder); each holds self- and cross-attention, so costs "
        "about 4/3 of an encoder block.", min=1, max=64, optional=True, show_if=ENCODER_DECODER)
    mlm_probability: float = number(
        0.15, "Mask probability",
        "Share of tokens the encoder must recover (BERT: 15%; 80% become [MASK], 10% a random token, 10% stay); "
        "more masks, more signal per step but less context.", min=0.0, min_open=True, max=1.0, max_open=True,
        step=0.05, show_if=ENCODER)
    noise_density: float = number(
        0.15, "Noise density",
        "Span corruption on text (T5): share of tokens hidden behind sentinels for the decoder to write out; "
        "longer targets, more decoder compute.", min=0.0, min_open=True, max=0.9, step=0.05, show_if=ENCODER_DECODER)
    mean_span_length: float = number(
        3.0, "Mean span length",
        "Span corruption on text: mean length of a hidden span (T5: 3); longer spans, fewer sentinels, a harder "
        "task; no cost difference.", min=1.0, max=64.0, step=0.5, show_if=ENCODER_DECODER)
    n_head: int = integer(4, "Heads", "Attention heads per block; must divide the width unless the head size is "
                          "set.", min=1, max=64)
    n_kv_head: int | None = integer(
        None, "Key/value heads",
        "Heads of keys and values, shared by groups of query heads (empty = one per head; 1 = multi-query): "
        "fewer shrink the KV cache and k/v projections by n_head / n_kv_head, at some quality.",
        min=1, max=64, optional=True)
    n_embd: int = integer(128, "Width", "Width of the residual stream (d_model).", min=1, max=4096)
    head_dim: int | None = integer(
        None, "Head size",
        "Width of each attention head (empty = width / heads); set, the heads side by side are n_head × head_dim "
        "wide, which need not equal the width (Mistral-NeMo: 32 × 128 in a 5120 stream; Gemma, Qwen3). q, k, v, "
        "o and the KV cache grow linearly with it.", min=1, max=1024, optional=True)
    block_size: int = integer(64, "Context length", "Longest sequence the model reads, in tokens.", min=1, max=8192)
    dropout: float = number(0.0, "Dropout", "Dropout rate on attention weights and residual branches; 0 is off.",
                            min=0.0, max=1.0, max_open=True, step=0.05)
    bias: bool = boolean(True, "Biases", "Bias vectors in linear layers and LayerNorms (LLaMA drops them).")
    qkv_bias: bool = boolean(
        False, "q/k/v biases",
        "Bias vectors on the query, key and value projections only, with Biases off (Qwen2): "
        "(n_head + 2 · n_kv_head) × head size parameters per layer; o_proj, the FFN and the norms stay without.",
        show_if={"model.bias": [False]})
    norm: str = choice("layernorm", NORMS, "Normalisation",
                       "LayerNorm (centre and scale), RMSNorm (scale only: one reduction fewer, no bias) or "
                       "RMSNorm with its gain stored as an offset from 1 (Gemma: x̂ · (1 + w), w starting at 0; "
                       "same cost).")
    norm_placement: str = choice(
        "pre", NORM_PLACEMENTS, "Norm placement",
        "Pre-norm (GPT-2, LLaMA: stable in deep stacks), post-norm (original Transformer: needs warm-up) "
        "or sandwich (Gemma 2: also normalises each branch's output, two more norms per block).")
    norm_eps: float = number(1e-5, "Norm epsilon", "Added to the variance inside every norm to avoid dividing by 0.",
                             min=0.0, min_open=True, max=0.1, step=1e-6)
    position: str = choice(
        "learned", POSITIONS, "Positions",
        "How token positions are encoded: a learned table (block_size × width parameters, no longer contexts), "
        "fixed sinusoids, none, RoPE rotations of q and k, ALiBi's distance penalty (both extend past "
        "block_size at no parameter cost), or T5's learned bias per head and distance bucket (buckets × heads "
        "parameters per stack).")
    relative_attention_num_buckets: int = integer(
        32, "Distance buckets",
        "T5 relative bias: distance buckets, half exact for short distances, half log-spaced (split between "
        "before and after in an encoder); buckets × heads parameters.", min=4, max=1024,
        show_if={"model.position": ["t5_relative"]})
    relative_attention_max_distance: int = integer(
        128, "Bucket max distance",
        "T5 relative bias: distances beyond this share the last bucket; free.", min=2, max=1_000_000,
        show_if={"model.position": ["t5_relative"]})
    rope_theta: float = number(10000.0, "RoPE base",
                               "Base of RoPE's geometric frequencies; larger bases resolve longer distances.",
                               min=1.0, max=1e9, step=1000.0, show_if={"model.position": ["rope"]})
    rope_scaling: str = choice(
        "none", ROPE_SCALINGS, "RoPE scaling",
        "Stretch RoPE to contexts rope_factor times longer than trained: linear interpolation, NTK-aware base "
        "change or YaRN (transformers' formulas); no cost at run time.", show_if={"model.position": ["rope"]})
    rope_factor: float = number(1.0, "RoPE factor", "How many times longer the context the RoPE scaling aims at.",
                                min=1.0, max=1024.0, step=0.5,
                                show_if={"model.position": ["rope"], "model.rope_scaling": ["linear", "ntk", "yarn"]})
    rope_original_block_size: int | None = integer(
        None, "RoPE original context",
        "Context the model was trained at, which YaRN keeps the high frequencies for (empty = block_size).",
        min=1, max=1_000_000, optional=True, show_if={"model.position": ["rope"], "model.rope_scaling": ["yarn"]})
    attention: str = choice(
        "full", ATTENTIONS, "Attention pattern", _attention("attention_help"))
    window: int = integer(64, "Window", "Sliding attention: each token sees the last this many tokens incl. itself; "
                          "compute and KV cache stop growing beyond it.", min=1, max=1_000_000,
                          show_if={"model.attention": _attention("attention_kinds", reads="window")})
    global_every: int = integer(
        2, "Global every",
        "Local/global attention: every this-many-th layer sees all earlier tokens, the others a sliding window "
        "(Gemma 2: 2, Gemma 3: 6); more global layers, more compute and KV cache at long contexts.",
        min=1, max=64, show_if={"model.attention": _attention("attention_kinds", reads="global_every")})
    dilation: int = integer(2, "Dilation",
                            "Dilated attention: head group g (of up to 4) sees keys at distances that are multiples "
                            "of dilation^g; larger values make far groups sparser and cheaper.", min=1, max=64,
                            show_if={"model.attention": _attention("attention_kinds", reads="dilation")})
    sparse_block: int = integer(16, "Sparse block",
                                "Block-sparse attention: tokens see their own block of this many tokens plus the "
                                "summary positions; cost grows with the block, not the context.", min=1, max=8192,
                                show_if={"model.attention": _attention("attention_kinds", reads="sparse_block")})
    sparse_stride: int = integer(4, "Summary stride",
                                 "Block-sparse attention: the last token of every this-many-th block is a summary "
                                 "all later tokens see; smaller strides add keys and cost.", min=1, max=8192,
                                 show_if={"model.attention": _attention("attention_kinds", reads="sparse_stride")})
    feature_map: str = choice("elu", FEATURE_MAPS, "Feature map",
                              "Linear attention's positive feature map φ: elu+1 (smooth) or relu (sparse); same cost.",
                              show_if={"model.attention": _attention("attention_kinds", reads="feature_map")})
    attn_impl: str = choice("sdpa", ATTENTION_FUNCTIONS, "Attention kernel",
                            "Same maths either way: PyTorch's fused kernel (sdpa) or the readable reference (eager).",
                            show_if={"model.attention": SOFTMAX})
    qk_norm: bool = boolean(False, "QK norm",
                            "RMS-normalise queries and keys per head before the scores (OLMo 2, Gemma 3): steadier "
                            "training at high learning rates, 2 × head size parameters per layer.")
    attn_softcap: float = number(0.0, "Score soft-cap",
                                 "Squash attention scores into (-c, c) with c·tanh(s/c) (Gemma 2); 0 is off; on, the "
                                 "sdpa kernel falls back to the slower eager path.", min=0.0, max=1000.0, step=1.0,
                                 show_if={"model.attention": SOFTMAX})
    query_pre_attn_scalar: int | None = integer(
        None, "Score scale base",
        "Scores are q·k / √(this) (empty = the head size, the usual 1/√head size); Gemma 2 27B uses 144 with heads "
        "of 128. Free.", min=1, max=65536, optional=True, show_if={"model.attention": SOFTMAX})
    final_softcap: float = number(0.0, "Logit soft-cap",
                                  "Squash output logits into (-c, c) with c·tanh(x/c) (Gemma 2); 0 is off; one tanh "
                                  "per logit.", min=0.0, max=1000.0, step=1.0)
    ffn: str = choice("gelu", FFNS, "Feed-forward",
                      "GPT-2's GELU MLP, or a gated FFN with a SiLU (SwiGLU, LLaMA) or GELU (GeGLU, Gemma) gate: "
                      "three matrices instead of two.")
    ffn_mult: float = number(4.0, "FFN expansion",
                             "Feed-forward hidden width as a multiple of the width (gated FFNs use 2/3 of that, "
                             "rounded up to a multiple of 8, for a similar parameter count).",
                             min=0.0, min_open=True, max=16.0, step=0.25)
    ffn_hidden: int | None = integer(
        None, "FFN hidden width",
        "Exact hidden width of the feed-forward (overrides the expansion; LLaMA-7B uses 11008); parameters and "
        "FLOPs grow linearly with it.", min=1, max=65536, optional=True)
    n_expert: int = integer(0, "Experts",
                            "Mixture of experts: this many FFNs per MoE layer, each token routed to top_k of them; "
                            "parameters grow with it, compute per token does not (0 = dense FFN).", min=0, max=256)
    top_k: int = integer(2, "Experts per token", "Experts each token is routed to; compute per token grows with it.",
                         min=1, max=256, show_if=MOE)
    capacity_factor: float = number(
        1.25, "Capacity factor",
        "An expert takes at most this × its even share of tokens; the rest skip it (0 = no limit: no dropped "
        "tokens, uneven load).", min=0.0, max=64.0, step=0.25, show_if=MOE)
    moe_every: int = integer(1, "MoE every", "Every this-many-th layer is MoE, the others dense (1 = all); "
                             "fewer MoE layers, fewer parameters.", min=1, max=64, show_if=MOE)
    shared_expert: bool = boolean(False, "Shared expert",
                                  "Add one expert every token uses (DeepSeekMoE): one more FFN of parameters and "
                                  "compute per MoE layer.", show_if=MOE)
    moe_renormalize: bool = boolean(True, "Renormalise gates",
                                    "Rescale the top-k gate weights to sum to 1 (Mixtral) or keep raw router "
                                    "probabilities (Switch); no cost either way.", show_if=MOE)
    aux_loss_coef: float = number(0.01, "Balance loss weight",
                                  "Weight of Switch's load-balancing loss, which spreads tokens evenly over experts; "
                                  "too high and it fights the language-model loss.", min=0.0, max=10.0, step=0.001,
                                  show_if=MOE)
    z_loss_coef: float = number(0.001, "Router z-loss weight",
                                "Weight of ST-MoE's router z-loss, which keeps router logits small for stability.",
                                min=0.0, max=10.0, step=0.0001, show_if=MOE)
    tie_embeddings: bool = boolean(True, "Tie embeddings",
                                   "Reuse the token embedding matrix as the output layer "
                                   "(saves vocab × width parameters).")
    embed_scale: bool = boolean(False, "Scale embeddings",
                                "Multiply the token embeddings by √width before the first block (Gemma), so a "
                                "tied embedding of small entries starts the stream at a norm near √width; free.")
    scale_residual_init: bool = boolean(True, "Scale residual init",
                                        "Initialise the projections into the residual stream 1/√(2·layers) smaller "
                                        "(GPT-2), so its variance does not grow with depth; free.")
    vocab_size: int | None = integer(None, "Vocabulary size", "Set from the data's tokenizer when left empty.",
                                     min=1, max=1_000_000, optional=True, form=False)
    n_token_type: int = integer(0, "Token types", "BERT's segment embeddings (encoder only; the engine uses "
                                "type 0); set by checkpoint imports such as all-MiniLM-L6-v2.", min=0, max=16,
                                form=False)

    @property
    def head_size(self) -> int:
        """Each attention head's width: ``head_dim``, or n_embd / n_head when it is not set."""
        return self.head_dim or self.n_embd // self.n_head

    @property
    def qkv_biased(self) -> bool:
        """Whether q_proj, k_proj and v_proj carry biases: with every linear layer's (``bias``), or alone
        (``qkv_bias``, Qwen2)."""
        return self.bias or self.qkv_bias

    @property
    def attn_scale(self) -> float | None:
        """What the scores q·k are multiplied by when ``query_pre_attn_scalar`` is set (Gemma 2); None
        for the usual 1/√head size, which the kernels apply themselves."""
        return self.query_pre_attn_scalar ** -0.5 if self.query_pre_attn_scalar else None

    @property
    def attention_width(self) -> int:
        """The heads side by side, what q_proj writes and o_proj reads: n_head × head_dim, or
        n_embd when ``head_dim`` is not set."""
        return self.n_head * self.head_dim if self.head_dim else self.n_embd


@dataclass
class DataConfig(Section):
    section: ClassVar[str] = "data"

    source: str = choice("synthetic", DATA_SOURCES, "Data source",
                         "Where tokens come from: a synthetic task, the local Python standard library's "
                         "source code, an uploaded UTF-8 text file, or (to fine-tune) an uploaded JSONL file of "
                         "prompt/response pairs (SFT) or prompt/chosen/rejected triples (DPO).")
    task: str = choice("copy", TASKS, "Task", "Synthetic task to learn (used when the data source is synthetic).")
    task_length: int = integer(8, "Task length",
                               "Items per synthetic example (key-value pairs for recall, at most 16); "
                               "ignored by modadd, which always adds two-digit numbers mod 97.", min=1, max=64)
    tokenizer: str = choice("char", TOKENIZERS, "Tokenizer",
                            "One token per character or per UTF-8 byte, or 'file': a tokenizer trained in the "
                            "tokenization lab; synthetic tasks ignore it and use their own fixed alphabet.")
    path: str | None = string(None, "Text file", "UTF-8 text file to train on (source 'text'), or JSONL file "
                              "of examples (source 'jsonl').", optional=True, form=False)
    tokenizer_file: str | None = string(None, "Tokenizer file",
                                        "A tokenizer.json or SentencePiece .model saved by the tokenization lab "
                                        "(tokenizer 'file').", optional=True, form=False)
    val_fraction: float = number(0.1, "Held-out fraction",
                                 "Share held out for validation: the end of a text, or of the possible synthetic "
                                 "examples (at most 256 of them).", min=0.01, max=0.5, step=0.01)
    seed: int = integer(0, "Data seed",
                        "Seed of the held-out synthetic examples; training batches follow the training seed.",
                        min=0, max=MAX_SEED)


@dataclass
class TrainConfig(Section):
    section: ClassVar[str] = "train"

    objective: str = choice(
        "pretrain", TRAINING_OBJECTIVES, "Objective",
        "Pretrain: the family's own objective (next token, masked tokens or span corruption). SFT: supervised "
        "fine-tuning on prompt/response chats, loss on the responses only. DPO: prefer chosen over rejected "
        "responses relative to a frozen copy of the starting model (two extra forwards per step: a reference's "
        "and a second response's). SFT and DPO train decoders.")
    dpo_beta: float = number(0.1, "DPO β",
                             "How strongly DPO's implicit reward is scaled: larger β keeps the policy closer to "
                             "the reference model (Rafailov et al. 2023 use 0.1-0.5).", min=0.0, min_open=True,
                             max=10.0, step=0.05, show_if={"train.objective": ["dpo"]})
    steps: int = integer(300, "Steps", "Optimizer steps to train for.", min=1, max=1_000_000)
    batch_size: int = integer(32, "Batch size", "Sequences per forward pass (per micro-batch).", min=1, max=4096)
    grad_accum_steps: int = integer(
        1, "Gradient accumulation",
        "Micro-batches summed before each optimizer step: the effective batch is batch size × this, for the "
        "memory of one micro-batch.", min=1, max=1024)
    optimizer: str = choice(
        "adamw", OPTIMIZERS, "Optimizer",
        "AdamW (the default), SGD with momentum, Lion (sign of interpolated momentum: one state, try a 3-10x "
        "lower lr) or Adafactor (factored second moments, steps relative to each weight's size).")
    lr: float = number(1e-3, "Learning rate", "Peak learning rate, reached at the end of warm-up.",
                       min=0.0, min_open=True, max=1.0, step=1e-4)
    beta1: float = number(0.9, "β1", "Momentum of the gradient's running mean (AdamW; Lion's update interpolation).",
                          min=0.0, max=1.0, max_open=True, step=0.01, show_if={"train.optimizer": ["adamw", "lion"]})
    beta2: float = number(0.95, "β2",
                          "AdamW's second-moment decay (0.95 is steadier than 0.999 in short runs); Lion's "
                          "momentum decay (the paper uses 0.99).", min=0.0, max=1.0, max_open=True, step=0.01,
                          show_if={"train.optimizer": ["adamw", "lion"]})
    momentum: float = number(0.9, "Momentum", "SGD's momentum (0 is plain gradient descent).",
                             min=0.0, max=1.0, max_open=True, step=0.01, show_if={"train.optimizer": ["sgd"]})
    weight_decay: float = number(0.1, "Weight decay", "Weight decay on matrices (not on biases or norm gains); "
                                 "decoupled for AdamW, Lion and Adafactor, L2 for SGD.",
                                 min=0.0, max=10.0, step=0.01)
    grad_clip: float = number(1.0, "Gradient clip", "Largest global gradient norm before clipping; 0 turns it off.",
                              min=0.0, max=1000.0, step=0.1)
    schedule: str = choice(
        "cosine", SCHEDULES, "LR schedule",
        "After warm-up: cosine or linear decay to the final ratio, constant, or warmup-stable-decay (constant, "
        "then a decay over the last steps).")
    warmup_steps: int = integer(30, "Warm-up steps", "Steps of linear learning-rate warm-up before the schedule.",
                                min=0, max=1_000_000)
    min_lr_ratio: float = number(0.1, "Final LR ratio",
                                 "The schedule ends at this fraction of the peak learning rate.",
                                 min=0.0, max=1.0, step=0.05,
                                 show_if={"train.schedule": ["cosine", "linear", "wsd"]})
    decay_fraction: float = number(0.2, "Decay fraction",
                                   "Share of all steps, at the end, over which warmup-stable-decay decays the "
                                   "learning rate.", min=0.0, min_open=True, max=1.0, step=0.05,
                                   show_if={"train.schedule": ["wsd"]})
    decay_shape: str = choice("linear", WSD_DECAYS, "Decay shape",
                              "How warmup-stable-decay comes down: linearly or as 1 − √progress (lower sooner).",
                              show_if={"train.schedule": ["wsd"]})
    on_nonfinite: str = choice(
        "skip", NONFINITE_ACTIONS, "On NaN/Inf",
        "When a step's loss or gradient is not finite: skip that step, skip it and halve the learning rate from "
        "then on, or stop the run.")
    eval_interval: int = integer(50, "Eval interval",
                                 "Evaluate on held-out data every this many steps, and at the end.",
                                 min=1)
    eval_iters: int = integer(10, "Eval batches",
                              "Batches averaged per loss estimate (synthetic tasks score their whole held-out set).",
                              min=1, max=10_000)
    log_interval: int = integer(1, "Log interval", "Report training progress every this many steps.", min=1)
    seed: int = integer(1337, "Seed", "Seed of initialisation, dropout and batch order: same seed, same run.",
                        min=0, max=MAX_SEED)
    device: str = choice("cpu", DEVICES, "Device",
                         "Where to train: the CPU, a CUDA GPU (with bf16 autocast), or a GPU when there is one.")
    compile: bool = boolean(False, "torch.compile",
                            "Compile the training step (torch.compile): faster steps after a one-off "
                            "compilation of tens of seconds, so worth it for long runs.")
    attention_maps: bool = boolean(True, "Attention maps",
                                   "At each evaluation, send every layer's and head's attention weights on one "
                                   "held-out example (one extra forward; about 10-200 kB per evaluation).")
    sample_tokens: int = integer(120, "Sample length",
                                 "Tokens generated from a held-out prompt at each evaluation "
                                 "(synthetic tasks generate their answer instead).", min=0, max=10_000)
    checkpoint_every: int = integer(100, "Checkpoint every",
                                    "Save weights, optimiser state and data position every this many steps "
                                    "(and at the end), so a stopped or crashed job resumes there; 0: at the end only.",
                                    min=0, max=1_000_000)
    init_from: str | None = string(None, "Start from checkpoint",
                                   "A checkpoint directory whose weights this run starts from (fine-tuning: "
                                   "pretrain, then SFT, then DPO); the architecture and tokenizer must match.",
                                   optional=True, form=False)


@dataclass
class JobSpec:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "data": self.data.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> JobSpec:
        # validating a whole spec loads its data, which the training layer does
        return resolve("engine.training.spec:parse_spec")(d)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}

# ---------------------------------------------------------------------------- validation


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _coerce(name: str, meta: dict, value):
    """Turn a JSON or form value into the field's type; returns (value, error message or None)."""
    kind = meta["kind"]
    if value is None or (value == "" and kind != "str"):
        if meta["optional"]:
            return None, None
        return None, f"{name} is required"
    if kind == "int":
        if isinstance(value, bool):
            return None, f"{name} must be a whole number (got {value!r})"
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        if isinstance(value, str):
            try:
                return int(value.strip()), None
            except ValueError:
                pass
        if isinstance(value, int):
            return value, None
        return None, f"{name} must be a whole number (got {value!r})"
    if kind == "float":
        if isinstance(value, bool):
            return None, f"{name} must be a number (got {value!r})"
        try:
            x = float(value)
        except (TypeError, ValueError):
            return None, f"{name} must be a number (got {value!r})"
        if not math.isfinite(x):
            return None, f"{name} must be a finite number (got {value!r})"
        return x, None
    if kind == "bool":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, int) and value in (0, 1):
            return bool(value), None
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "on", "yes", "false", "0", "off", "no"):
            return value.strip().lower() in ("true", "1", "on", "yes"), None
        return None, f"{name} must be true or false (got {value!r})"
    if not isinstance(value, str):  # "choice" and "str"
        return None, f"{name} must be a string (got {value!r})"
    return value, None


def _check_value(name: str, meta: dict, value, upper_bounds: bool = True) -> str | None:
    """Bounds and registry membership of one already-typed value."""
    if value is None:
        return None
    if meta["kind"] == "choice":
        registry = resolve(meta["choices"])
        if value not in registry:
            return f"unknown {name} {value!r}; choose from {list(registry)}"
        return None
    lo, hi = meta["min"], meta["max"] if upper_bounds or meta["kind"] != "int" else None
    if lo is not None and (value <= lo if meta["min_open"] else value < lo):
        return f"{name} must be {'>' if meta['min_open'] else '≥'} {_fmt(lo)} (got {_fmt(value)})"
    if hi is not None and (value >= hi if meta["max_open"] else value > hi):
        return f"{name} must be {'<' if meta['max_open'] else '≤'} {_fmt(hi)} (got {_fmt(value)})"
    return None


def _cross_checks(section: str, cfg, bad: set[str]) -> dict[str, str]:
    """Checks that involve two fields of one section; ``bad`` names fields already in error."""
    def ok(*names):
        return not bad.intersection(names)

    errors = {}
    if section == "model":
        errors.update(_model_checks(cfg, ok))
    if section == "train" and ok("warmup_steps", "steps") and cfg.warmup_steps > cfg.steps:
        errors["warmup_steps"] = f"warmup_steps ({cfg.warmup_steps}) must be ≤ steps ({cfg.steps})"
    if section == "data":
        if ok("source", "path") and cfg.source in ("text", "jsonl") and not cfg.path:
            errors["path"] = f"path is required when source is {cfg.source!r}"
        if (ok("source", "tokenizer", "tokenizer_file") and cfg.source != "synthetic" and cfg.tokenizer == "file"
                and not cfg.tokenizer_file):
            errors["tokenizer_file"] = "tokenizer_file is required when tokenizer is 'file'"
        limit = resolve(TASKS)[cfg.task].max_length if ok("task") else None
        if ok("source", "task_length") and limit and cfg.source == "synthetic" and cfg.task_length > limit:
            errors["task_length"] = f"task_length ({cfg.task_length}) must be ≤ {limit} for {cfg.task}"
    return errors


def _model_checks(cfg: ModelConfig, ok) -> dict[str, str]:
    errors = {}
    if ok("n_head", "n_embd", "head_dim") and not cfg.head_dim and cfg.n_embd % cfg.n_head:
        errors["n_head"] = f"n_head ({cfg.n_head}) must divide n_embd ({cfg.n_embd})"
    if ok("n_kv_head", "n_head") and cfg.n_kv_head is not None and cfg.n_head % cfg.n_kv_head:
        errors["n_kv_head"] = f"n_kv_head ({cfg.n_kv_head}) must divide n_head ({cfg.n_head})"
    if ok("position", "n_head", "n_embd", "head_dim") and cfg.position == "rope" and "n_head" not in errors:
        if cfg.head_size % 2:
            size = f"head_dim ({cfg.head_dim})" if cfg.head_dim else f"n_embd / n_head ({cfg.head_size})"
            errors["head_dim" if cfg.head_dim else "position"] = (
                f"position 'rope' rotates pairs of dimensions, so the head size {size} must be even")
    if ok("position", "attention") and cfg.position in ("alibi", "t5_relative") \
            and not resolve(ATTENTIONS)[cfg.attention].has_scores:
        errors["position"] = f"position {cfg.position!r} biases attention scores, which attention " \
                             f"{cfg.attention!r} has none of; choose from " \
                             f"{[p for p in resolve(POSITIONS) if p not in ('alibi', 't5_relative')]}"
    if ok("n_expert", "top_k") and cfg.n_expert and cfg.top_k > cfg.n_expert:
        errors["top_k"] = f"top_k ({cfg.top_k}) must be ≤ n_expert ({cfg.n_expert})"
    if ok("attention", "global_every", "n_layer") and cfg.global_every > cfg.n_layer \
            and "global_every" in getattr(resolve(ATTENTIONS)[cfg.attention], "fields", ()):
        errors["global_every"] = (f"global_every ({cfg.global_every}) must be ≤ n_layer ({cfg.n_layer}), or no "
                                  f"layer is global")
    if ok("n_expert", "moe_every", "n_layer") and cfg.n_expert and cfg.moe_every > cfg.n_layer:
        errors["moe_every"] = f"moe_every ({cfg.moe_every}) must be ≤ n_layer ({cfg.n_layer}), or no layer is MoE"
    errors.update(family_checks(cfg, ok))
    return errors


def family_checks(cfg: ModelConfig, ok) -> dict[str, str]:
    """Config checks that depend on the family (``ok(*fields)``: none of them already in error)."""
    errors = {}
    if ok("family", "n_decoder_layer") and cfg.n_decoder_layer is not None and cfg.family != "encoder_decoder":
        errors["n_decoder_layer"] = (f"n_decoder_layer ({cfg.n_decoder_layer}) only applies to family "
                                     f"'encoder_decoder' (got {cfg.family!r}); leave it empty")
    if ok("family", "n_token_type") and cfg.n_token_type and cfg.family != "encoder":
        errors["n_token_type"] = (f"n_token_type ({cfg.n_token_type}) only applies to family 'encoder' "
                                  f"(got {cfg.family!r})")
    if ok("family", "block_size") and cfg.family == "encoder_decoder" and cfg.block_size < 2:
        errors["block_size"] = ("block_size (1) must be ≥ 2 for 'encoder_decoder': span corruption keeps "
                                "one token and hides another")
    if ok("relative_attention_num_buckets", "relative_attention_max_distance") and cfg.position == "t5_relative":
        # a causal stack gives the first half of its buckets to exact distances; the log-spaced rest
        # must reach further, or T5's formula divides by log(1) = 0
        exact = cfg.relative_attention_num_buckets // 2
        if cfg.relative_attention_max_distance <= exact:
            errors["relative_attention_max_distance"] = (
                f"relative_attention_max_distance ({cfg.relative_attention_max_distance}) must exceed "
                f"relative_attention_num_buckets / 2 ({exact}), the distances a causal stack gives a bucket each")
    return errors


def _parse_section(cls: type[Section], d, check_values: bool = True,
                   upper_bounds: bool = True) -> tuple[Section, dict[str, str]]:
    """Build one section's config from a dict; returns (config, errors keyed "section.field").
    Fields with errors keep their defaults so that the remaining checks can still run."""
    section = cls.section
    if d is None:
        d = {}
    if not isinstance(d, dict):
        return cls(), {section: f"{section} must be an object of fields (got {type(d).__name__})"}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    errors, values = {}, {}
    for key in d:
        if key not in fields:
            errors[f"{section}.{key}"] = f"unknown {section} field {key!r}; choose from {list(fields)}"
    for name, f in fields.items():
        if name not in d:
            continue
        value, err = _coerce(name, f.metadata, d[name])
        if check_values:
            err = err or _check_value(name, f.metadata, value, upper_bounds)
        if err:
            errors[f"{section}.{name}"] = err
        else:
            values[name] = value
    cfg = cls(**values)
    if not check_values:
        return cfg, errors
    bad = {name for name in fields if f"{section}.{name}" in errors}
    errors.update({f"{section}.{k}": v for k, v in _cross_checks(section, cfg, bad).items()})
    return cfg, errors


# ---------------------------------------------------------------------------- form description


# How the composer groups each section's fields, in display order. A form field missing here
# still shows, last, under "Other" (tests/engine/config/test_config.py asserts there is none).
FIELD_GROUPS = {
    "model": {
        "Shape": ("family", "n_layer", "n_decoder_layer", "n_head", "n_kv_head", "n_embd", "head_dim", "block_size",
                  "dropout",
                  "bias", "qkv_bias",
                  "tie_embeddings", "embed_scale"),
        "Attention": ("attention", "window", "global_every", "dilation", "sparse_block", "sparse_stride",
                      "feature_map", "qk_norm", "attn_softcap", "query_pre_attn_scalar", "attn_impl"),
        "Positions": ("position", "rope_theta", "rope_scaling", "rope_factor", "rope_original_block_size",
                      "relative_attention_num_buckets", "relative_attention_max_distance"),
        "Norms & residuals": ("norm", "norm_placement", "norm_eps", "scale_residual_init"),
        "Feed-forward": ("ffn", "ffn_mult", "ffn_hidden"),
        "Mixture of Experts": ("n_expert", "top_k", "capacity_factor", "moe_every", "shared_expert",
                               "moe_renormalize", "aux_loss_coef", "z_loss_coef"),
        "Output": ("final_softcap",),
        "Objective": ("mlm_probability", "noise_density", "mean_span_length"),
    },
    "data": {"": ("source", "task", "task_length", "tokenizer", "val_fraction", "seed")},
    "train": {
        "Objective": ("objective", "dpo_beta"),
        "Optimisation": ("steps", "batch_size", "grad_accum_steps", "optimizer", "lr", "beta1", "beta2", "momentum",
                         "weight_decay", "grad_clip"),
        "Schedule": ("schedule", "warmup_steps", "min_lr_ratio", "decay_fraction", "decay_shape"),
        "Evaluation": ("eval_interval", "eval_iters", "log_interval", "sample_tokens", "attention_maps"),
        "Run": ("seed", "device", "compile", "on_nonfinite", "checkpoint_every"),
    },
}


def field_specs() -> list[dict]:
    """One dict per user-settable field, in form order, for generating the web form:
    ``{"name", "section", "key", "group", "label", "type", "default", "min", "max", "step", "choices", "help"}``,
    plus ``show_if`` on fields that only apply to some settings: ``{"model.attention": ["sliding"]}``
    (the other field has one of those values) or ``{"model.n_expert": {"min": 1}}`` (at least that);
    several keys must all hold. Fields come grouped as ``FIELD_GROUPS`` lists them.
    ``model.vocab_size``, ``data.path``, ``data.tokenizer_file`` and ``train.init_from`` are left out: the
    app sets them."""
    specs = []
    for section, cls in SECTIONS.items():
        groups = FIELD_GROUPS.get(section, {})
        group_of = {key: group for group, keys in groups.items() for key in keys}
        order = {key: i for i, key in enumerate(k for keys in groups.values() for k in keys)}
        fields = [f for f in dataclasses.fields(cls) if f.metadata["form"]]
        for f in sorted(fields, key=lambda f: order.get(f.name, len(order))):
            meta = f.metadata
            spec = {
                "name": f"{section}.{f.name}",
                "section": section,
                "key": f.name,
                "group": group_of.get(f.name, "Other"),
                "label": meta["label"],
                "type": meta["kind"],
                "default": f.default,
                "min": meta["min"],
                "max": meta["max"],
                "help": meta["help"]() if callable(meta["help"]) else meta["help"],
            }
            if meta["kind"] == "float":
                spec["step"] = meta["step"]
            if meta["kind"] == "choice":
                spec["choices"] = list(resolve(meta["choices"]))
            if meta["show_if"]:
                spec["show_if"] = {k: v() if callable(v) else v for k, v in meta["show_if"].items()}
            specs.append(spec)
    return specs


def choices() -> dict[str, list[str]]:
    """The option lists of every choice field, straight from the registries."""
    return {
        "family": list(resolve(FAMILIES)),
        "norm": list(resolve(NORMS)),
        "norm_placement": list(resolve(NORM_PLACEMENTS)),
        "position": list(resolve(POSITIONS)),
        "rope_scaling": list(resolve(ROPE_SCALINGS)),
        "attention": list(resolve(ATTENTIONS)),
        "feature_map": list(resolve(FEATURE_MAPS)),
        "ffn": list(resolve(FFNS)),
        "attn_impl": list(resolve(ATTENTION_FUNCTIONS)),
        "tokenizer": list(resolve(TOKENIZERS)),
        "source": list(resolve(DATA_SOURCES)),
        "task": list(resolve(TASKS)),
        "device": list(resolve(DEVICES)),
        "optimizer": list(resolve(OPTIMIZERS)),
        "schedule": list(resolve(SCHEDULES)),
        "decay_shape": list(resolve(WSD_DECAYS)),
        "on_nonfinite": list(resolve(NONFINITE_ACTIONS)),
        "objective": list(resolve(TRAINING_OBJECTIVES)),
    }
