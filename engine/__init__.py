"""The LLM Architecture Explorer's engine: pure PyTorch, no web framework.

Config in, events out::

    from engine import parse_spec, train, analyze

    spec = parse_spec({"model": {"n_layer": 2}, "data": {"task": "reverse"}, "train": {"steps": 200}})
    costs = analyze(spec.model, batch_size=spec.train.batch_size)   # params, FLOPs, memory
    result = train(spec, on_event=print, should_stop=lambda: False)

Configuration
    ``ModelConfig``, ``DataConfig``, ``TrainConfig`` (dataclasses with ``to_dict``/``from_dict``),
    bundled in a ``JobSpec``. ``parse_spec(dict)`` validates every field and the data-dependent
    limits, raising ``ConfigError`` whose ``errors`` maps "section.field" to a message.
    ``choices()`` lists the registry keys of every choice field; ``field_specs()`` describes
    each user-settable field (label, type, bounds, help) for form generation.

Data
    ``describe_data(DataConfig)`` -> vocab_size, n_tokens, train/val tokens, name, description
    (cached, cheap to call repeatedly). Sources, tasks and tokenizers: ``DATA_SOURCES``,
    ``TASKS``, ``TOKENIZERS``.

Tokenization lab
    ``engine.tokenlab``: train ("bpe", "bpe_byte_fallback", "unigram", "wordpiece", SentencePiece
    BPE/Unigram, "char", "byte"), load (tokenizer.json, .model) and compare tokenizers; encodings
    with character offsets, metrics, merge replay. ``DataConfig(tokenizer="file",
    tokenizer_file=...)`` trains a model on a lab tokenizer's ids.

Model
    ``ModelConfig.family`` picks "decoder", "encoder" (BERT-style, masked LM) or
    "encoder_decoder" (T5-style, seq2seq) from ``FAMILIES``; a decoder is an ``nn.Module`` with
    ``forward(idx, targets=None, *, cache=None, start_pos=0) -> (logits, loss)``, ``num_params()``,
    ``make_cache()``, ``moe_stats()`` and
    ``generate(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator)``; components
    come from ``NORMS``, ``POSITIONS``, ``ATTENTIONS``, ``FFNS``. An attention kind is one
    ``AttentionKind`` subclass (costs, KV bound, mask, label, colour token, help on the class);
    ``register_attention(name, cls)`` / ``unregister_attention(name)`` add one at run time,
    ``describe_attentions()`` lists them for the web app.
    ``generate(model, tokenizer, prompt, ...)`` -> str. ``KVCache``, ``SlidingWindowCache``.
    The other families: ``engine.encoder``, ``engine.encoder_decoder``; ``engine.pretrained.load_minilm()``.
    ``capture_attention(model, layers, heads)``: a context manager collecting attention weights;
    ``attention_snapshot`` / ``attention_event``: every layer's and head's maps on one held-out
    input as a compact "attention" event (``engine.attention_maps``).

Training
    ``train(spec, on_event=..., should_stop=..., progress=False, checkpoint_dir=None,
    resume_from=None, init_from=None)`` -> ``TrainResult``; events are plain dicts of kind
    "start", "step", "health", "moe", "eval", "attention", "routing", "nonfinite", "checkpoint"
    and "end" (see ``engine.train``). Optimizers and schedules: ``engine.optim``.
    ``TrainConfig.objective``: "pretrain" (the family's own), "sft" (prompt/response pairs in a
    chat template, loss on responses only: ``engine.chat``) or "dpo" (preference pairs against a
    frozen reference model: ``engine.preference``); data from JSONL files (source "jsonl") or
    built-in synthetic sets.

Checkpoints
    ``engine.checkpoint``: safetensors weights + optimiser state + data position and RNG states;
    ``load_model(path)`` -> (model, tokenizer, config); ``export_transformers(path, out_dir)``.

Inference and quantisation
    ``run_inference(model, tokenizer, prompts, max_new_tokens=, temperature=, top_k=, top_p=,
    stop=, seed=, compare_cache=)`` -> completions with per-token probabilities and alternatives,
    time to first token, tokens/s and peak memory (``engine.inference``); encoders return
    embedding similarities. ``quantize(model, method)`` over ``QUANTIZATIONS`` (int8 dynamic,
    int8 weight-only, int4 group-wise) and ``quantization_table(model, val_tokens)`` -> perplexity,
    size and speed per method (``engine.quantize``).

Interop
    ``to_transformers(model)`` -> the matching ``transformers`` model (GPT-2, Llama, Mistral,
    Mixtral, BERT, T5) with the same weights; ``from_transformers(hf_model)`` -> ours, its
    ``.config`` the engine config. ``transformers`` is imported only when these are called.

Presets
    ``PRESETS`` (GPT-2, BERT, T5, Llama 2/3, Mistral, Mixtral, Phi-3 ... as ModelConfigs, each
    with a description and source), ``preset(name)``; ``config_from_hf(config_json_dict)``.

Analysis
    ``analyze(ModelConfig, vocab_size=, batch_size=, seq_len=, dtype=, optimizer=, n_gpus=,
    sharding=, activation_checkpointing=, flash_attention=, quantization=, hardware=, ...)`` ->
    params, FLOPs, memory (training per GPU, inference), KV cache and each term's formula, without
    building the model (``engine.analysis.analysis_options()`` lists the choices).
    ``fit(ModelConfig, device_key, ...)``
    -> training and inference memory verdicts, the largest batch that fits, decode/prefill
    throughput bounds, time and cost to train; ``HARDWARE`` is the device catalogue.
    ``structure(ModelConfig, t=32)``: the attention mask and the position signal as matrices to draw.
"""

import warnings

from .analysis import analyze
from .attention import ATTENTIONS, AttentionKind, describe_attentions, register_attention, unregister_attention
from .attention_maps import attention_event, attention_snapshot
from .cache import KVCache, SlidingWindowCache
from .capture import capture_attention
from .config import ConfigError, DataConfig, JobSpec, ModelConfig, TrainConfig, choices, field_specs, parse_spec
from .data import DATA_SOURCES, describe_data
from .ffn import FFNS
from .hardware import HARDWARE, fit, largest_batch
from .inference import run_inference
from .quantize import QUANTIZATIONS, quantization_table, quantize, weight_bytes
from . import checkpoint
from .hf_config import config_from_hf
from .interop import from_transformers, to_transformers
from .model import build_model, generate
from .norm import NORMS
from .position import POSITIONS
from .presets import PRESETS, preset
from .structure import structure
from .tasks import TASKS
from .tokenizers import TOKENIZERS
from . import tokenlab
from .train import TrainResult, train

__all__ = [
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "JobSpec",
    "ConfigError",
    "parse_spec",
    "build_model",
    "train",
    "TrainResult",
    "analyze",
    "describe_data",
    "choices",
    "field_specs",
    "generate",
    "TOKENIZERS",
    "tokenlab",
    "DATA_SOURCES",
    "TASKS",
    "NORMS",
    "POSITIONS",
    "FFNS",
    "ATTENTIONS",
    "AttentionKind",
    "register_attention",
    "unregister_attention",
    "describe_attentions",
    "KVCache",
    "SlidingWindowCache",
    "capture_attention",
    "attention_snapshot",
    "attention_event",
    "to_transformers",
    "from_transformers",
    "config_from_hf",
    "PRESETS",
    "preset",
    "HARDWARE",
    "fit",
    "largest_batch",
    "structure",
    "checkpoint",
    "run_inference",
    "QUANTIZATIONS",
    "quantize",
    "quantization_table",
    "weight_bytes",
]

# ``python -m engine.train`` runs a module this package has already imported (for ``train``);
# runpy warns about that after importing the package, harmlessly since the module only
# defines things, so hush that one warning
warnings.filterwarnings("ignore", message=r"'engine\.train' found in sys\.modules", category=RuntimeWarning)
