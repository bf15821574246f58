"""The LLM Architecture Explorer's engine: pure PyTorch, no web framework.

Every name below is imported on first use (module ``__getattr__``): ``import engine`` loads no
torch. The code lives in layers, each importing only from those before it (docs/engine.md,
"Layers"): ``config`` -> ``nn`` -> ``models`` -> ``data``, ``tokenlab`` -> ``inference``,
``analysis``, ``introspect`` -> ``serving`` -> ``training`` -> ``interop``. ``engine.serving``: many
requests decoded together (``ServingEngine``, a paged KV cache, continuous batching).

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
    ``generate(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator, stop_token)``; components
    come from ``NORMS``, ``POSITIONS``, ``ATTENTIONS``, ``FFNS``. An attention kind is one
    ``AttentionKind`` subclass (costs, KV bound, mask, label, colour token, help on the class);
    ``register_attention(name, cls)`` / ``unregister_attention(name)`` add one at run time,
    ``describe_attentions()`` lists them for the web app.
    ``generate(model, tokenizer, prompt, ...)`` -> str. ``KVCache``, ``SlidingWindowCache``.
    The other families: ``engine.models.encoder``, ``engine.models.encoder_decoder``;
    ``engine.interop.pretrained.load_minilm()``, ``engine.interop.pretrained.load_smollm2()``
    (a real chat Llama; ``engine.interop.pretrained.PRETRAINED`` lists them).
    ``capture_attention(model, layers, heads)``: a context manager collecting attention weights;
    ``attention_snapshot`` / ``attention_event``: every layer's and head's maps on one held-out
    input as a compact "attention" event (``engine.introspect.attention_maps``).

Training
    ``train(spec, on_event=..., should_stop=..., progress=False, checkpoint_dir=None,
    resume_from=None, init_from=None)`` -> ``TrainResult``; events are plain dicts of kind
    "start", "step", "health", "moe", "eval", "attention", "routing", "nonfinite", "checkpoint"
    and "end" (defined in ``engine.config.events``; docs/events.md). Optimizers and schedules: ``engine.training.optim``.
    ``TrainConfig.objective``: "pretrain" (the family's own), "sft" (prompt/response pairs in a
    chat template, loss on responses only: ``engine.data.chat``) or "dpo" (preference pairs against a
    frozen reference model: ``engine.training.preference``); data from JSONL files (source "jsonl") or
    built-in synthetic sets.

Checkpoints
    ``engine.checkpoint`` (``engine.training.checkpoint``): safetensors weights + optimiser state + data position and RNG states;
    ``load_model(path)`` -> (model, tokenizer, config); ``engine.interop.export.export_transformers(path,
    out_dir)``.

Inference and quantisation
    ``run_inference(model, tokenizer, prompts, max_new_tokens=, temperature=, top_k=, top_p=,
    stop=, seed=, compare_cache=)`` -> completions with per-token probabilities and alternatives,
    time to first token, tokens/s and peak memory (``engine.inference.run``); encoders return
    embedding similarities. ``quantize(model, method)`` over ``QUANTIZATIONS`` (int8 dynamic,
    int8 weight-only, int4 group-wise, and w8a16/w4a16 through torch's CPU weight-only kernels,
    the ones that decode faster than fp32) and ``quantization_table(model, val_tokens)`` -> perplexity,
    size and speed per method (``engine.inference.quantize``).

Interop
    ``to_transformers(model)`` -> the matching ``transformers`` model (GPT-2, Llama, Mistral,
    Mixtral, BERT, T5) with the same weights; ``from_transformers(hf_model)`` -> ours, its
    ``.config`` the engine config. ``transformers`` is imported only when these are called.

Presets
    ``PRESETS`` (GPT-2, BERT, T5, Llama 2/3, Mistral, Mixtral, Phi-3 ... as ModelConfigs, each
    with a description and source), ``preset(name)``; ``config_from_hf(config_json_dict)`` (also
    ``engine.interop.config_from_hf``).

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

import importlib

# name -> "module:attribute" (or "module" for a module): imported on first use, so that
# ``import engine`` and ``import engine.config`` load no torch
_PUBLIC = {
    "ModelConfig": "engine.config.schema:ModelConfig",
    "DataConfig": "engine.config.schema:DataConfig",
    "TrainConfig": "engine.config.schema:TrainConfig",
    "JobSpec": "engine.config.schema:JobSpec",
    "ConfigError": "engine.config.errors:ConfigError",
    "choices": "engine.config.schema:choices",
    "field_specs": "engine.config.schema:field_specs",
    "PRESETS": "engine.config.presets:PRESETS",
    "preset": "engine.config.presets:preset",
    "NORMS": "engine.nn.norm:NORMS",
    "POSITIONS": "engine.nn.position:POSITIONS",
    "FFNS": "engine.nn.ffn:FFNS",
    "ATTENTIONS": "engine.nn.attention:ATTENTIONS",
    "AttentionKind": "engine.nn.attention:AttentionKind",
    "register_attention": "engine.nn.attention:register_attention",
    "unregister_attention": "engine.nn.attention:unregister_attention",
    "describe_attentions": "engine.nn.attention:describe_attentions",
    "KVCache": "engine.nn.cache:KVCache",
    "SlidingWindowCache": "engine.nn.cache:SlidingWindowCache",
    "build_model": "engine.models.families:build_model",
    "generate": "engine.models.decoder:generate",
    "DATA_SOURCES": "engine.data.datasets:DATA_SOURCES",
    "describe_data": "engine.data.datasets:describe_data",
    "TASKS": "engine.data.tasks:TASKS",
    "TOKENIZERS": "engine.data.tokenizers:TOKENIZERS",
    "tokenlab": "engine.tokenlab",
    "parse_spec": "engine.training.spec:parse_spec",
    "train": "engine.training.loop:train",
    "TrainResult": "engine.training.loop:TrainResult",
    "checkpoint": "engine.training.checkpoint",
    "run_inference": "engine.inference.run:run_inference",
    "QUANTIZATIONS": "engine.inference.quantize:QUANTIZATIONS",
    "quantize": "engine.inference.quantize:quantize",
    "quantization_table": "engine.inference.quantize:quantization_table",
    "weight_bytes": "engine.inference.quantize:weight_bytes",
    "analyze": "engine.analysis:analyze",
    "HARDWARE": "engine.analysis.hardware:HARDWARE",
    "fit": "engine.analysis.hardware:fit",
    "largest_batch": "engine.analysis.hardware:largest_batch",
    "structure": "engine.analysis.structure:structure",
    "capture_attention": "engine.introspect.capture:capture_attention",
    "attention_snapshot": "engine.introspect.attention_maps:attention_snapshot",
    "attention_event": "engine.introspect.attention_maps:attention_event",
    "to_transformers": "engine.interop.mappings:to_transformers",
    "from_transformers": "engine.interop.mappings:from_transformers",
    "config_from_hf": "engine.interop:config_from_hf",
}


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    module, _, attribute = _PUBLIC[name].partition(":")
    value = importlib.import_module(module)
    if attribute:
        value = getattr(value, attribute)
    globals()[name] = value  # once resolved, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


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
