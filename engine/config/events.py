"""Every event a job emits, defined once: the contract between the engine, the app and the page.

A job reports through a plain callback, ``on_event(event)``, where ``event`` is a JSON-ready dict
whose "kind" names one of ``EVENTS``. Each kind's keys and their types are the ``TypedDict``
below (``Annotated`` with what the key means); the engine builds its events from them
(``StepEvent(kind="step", ...)``), the app's recorder takes the kinds it saves at once and the
keys it copies into a job's summary from ``EVENTS``, the web page takes the kind names from
``static/js/events.js`` (checked against this module by a test), and ``event_schema()`` is the
same contract as JSON Schema, served at ``GET /api/v1/events/schema``. ``docs/events.md`` is
generated from here (``python -m engine.config.events --markdown``).

Stored and sent, an event becomes ``{"seq", "kind", "ts", "data"}``: ``data`` is the event
without its "kind". Every number is finite: a NaN or infinite one is sent as None (the keys
typed ``float | None``). ``validate(event)`` lists what in an event breaks the contract.

Torch-free and importing nothing else of the engine, so any layer may use it.
"""

import json
import math
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, TypedDict


# ---------------------------------------------------------------------------- nested values
class HealthLayer(TypedDict):
    """One transformer block's health at an evaluation step."""
    layer: Annotated[int, "the block's index in model order (encoder first)"]
    name: Annotated[str, 'its module name ("h.0", "enc_h.1")']
    grad_norm: Annotated[float | None, "2-norm of its gradients, before clipping"]
    weight_norm: Annotated[float | None, "2-norm of its weights"]
    update_ratio: Annotated[float | None, "‖Δw‖ / ‖w‖ of its weights this step"]


class MoeLayer(TypedDict):
    """One MoE layer's routing of a training batch."""
    layer: Annotated[int, "the block's index"]
    tokens_per_expert: Annotated[list[int], "tokens routed to each expert"]
    dropped: Annotated[int, "tokens over an expert's capacity"]
    aux_loss: Annotated[float | None, "the load-balancing loss"]
    z_loss: Annotated[float | None, "the router z-loss"]


class Sample(TypedDict):
    """A completion of one held-out example."""
    prompt: Annotated[str, "the example's input"]
    completion: Annotated[str, "what the model made of it (a chat's stops at <|end|>)"]
    expected: Annotated[str | None, "the reference answer (None where there is none)"]


class MapsOverview(TypedDict):
    """A long input's attention maps pooled into blocks, covering every position."""
    shape: Annotated[list[int], "[n_layer, n_head, Nq, Nk]"]
    block: Annotated[list[int], "positions per block, queries and keys"]
    length: Annotated[list[int], "the whole input's length, queries and keys"]
    encoding: Annotated[Literal["uint8-base64"], "base64 of uint8 round(255·w / row sum), row-major"]
    maps: Annotated[str, "the pooled maps"]


class AttentionStack(TypedDict):
    """One attention stack's maps (decoder "self"; encoder-decoder "encoder", "self", "cross")."""
    n_layer: int
    n_head: int
    shape: Annotated[list[int], "[n_layer, n_head, Tq, Tk] of the window"]
    queries: Annotated[str, 'which sequence the queries come from ("tokens" or "source_tokens")']
    keys: Annotated[str, "which sequence the keys come from"]
    encoding: Annotated[Literal["uint8-base64"], "base64 of uint8 round(255·w / row sum), row-major"]
    maps: Annotated[str, "the window's maps"]
    overview: NotRequired[Annotated[MapsOverview, "long inputs only: every position, pooled"]]


class AttentionInput(TypedDict):
    """The ids a long input's maps were made on, so that a region can be recomputed."""
    encoding: Literal["uint16-base64", "int32-base64"]
    tokens: Annotated[str, "the (decoder's) ids"]
    source_tokens: NotRequired[Annotated[str, "an encoder-decoder's source ids"]]
    specials: Annotated[dict[str, str], "names of the ids above the tokenizer's vocabulary"]


class RoutingLayer(TypedDict):
    """One MoE layer's choices for each token of the held-out example."""
    layer: int
    input: Annotated[str, 'the sequence it routes ("tokens" or "source_tokens")']
    experts: Annotated[list[list[int]], "top-k expert indices per token"]
    weights: Annotated[list[list[float]], "their gate weights"]
    dropped: Annotated[list[list[bool]], "per token and chosen expert: whether it went over capacity"]


# ---------------------------------------------------------------------------- the events
class StartEvent(TypedDict):
    """The job began its work (every job kind)."""
    kind: Literal["start"]
    total_steps: Annotated[int, "steps of the run (100 for an inference or tokenizer job: percent)"]
    device: Annotated[str, 'where it runs ("cpu", "cuda:0")']
    resumed_from_step: NotRequired[Annotated[int, "training, when resuming: the checkpoint's step"]]
    params: NotRequired[Annotated[int, "training, inference and chat: the model's parameters"]]
    vocab_size: NotRequired[Annotated[int, "training: the vocabulary"]]
    tokens_per_step: NotRequired[Annotated[int, "training: tokens read per optimizer step (all micro-batches)"]]
    train_tokens: NotRequired[Annotated[int, "training: tokens of the training split"]]
    val_tokens: NotRequired[Annotated[int, "training: tokens of the validation split"]]
    peak_flops: NotRequired[Annotated[float | None, "training: the device's dense peak FLOP/s (None if unknown)"]]
    peak_source: NotRequired[Annotated[str | None, "training: where the peak came from (a datasheet, measured now, "
                                                   "cached from ...)"]]
    family: NotRequired[Annotated[str, "inference and chat: the model's family"]]
    source: NotRequired[Annotated[dict[str, Any], "inference and chat: the checkpoint or pretrained model it runs"]]
    n_prompts: NotRequired[Annotated[int, "inference: prompts given"]]
    n_prompt_tokens: NotRequired[Annotated[int, "chat: the conversation's tokens in the chat template"]]


class StepEvent(TypedDict):
    """Training progress, every ``log_interval`` steps and at the last; means since the last one."""
    kind: Literal["step"]
    step: Annotated[int, "the optimizer step (1-based)"]
    loss: Annotated[float | None, "mean training loss since the last step event, without MoE's terms"]
    lr: Annotated[float, "the learning rate of this step"]
    grad_norm: Annotated[float | None, "global gradient norm, before clipping"]
    tokens_per_s: Annotated[float, "tokens read per second over the recent steps"]
    elapsed: Annotated[float, "seconds since the start"]
    eta: Annotated[float, "seconds left, evaluations included"]
    effective_batch: Annotated[int, "batch_size × grad_accum_steps"]
    clipped: Annotated[bool, "grad_norm > grad_clip"]
    update_ratio: Annotated[float | None, "‖Δw‖ / ‖w‖ over all weights, this step"]
    spike: Annotated[bool, "a loss spike since the last step event (engine.train.SPIKE_K)"]
    mfu: Annotated[float | None, "model FLOPs utilisation (None where the device's peak is unknown); at most 1: "
                                 "a faster step raises the peak, and that step event carries the new peak"]
    peak_flops: NotRequired[Annotated[float, "when this step raised the device's peak: the new peak FLOP/s"]]
    peak_source: NotRequired[Annotated[str, "when this step raised the device's peak: why"]]
    aux_loss: NotRequired[Annotated[float | None, "with experts: the weighted load-balancing + z-loss terms"]]
    chosen_logp: NotRequired[Annotated[float | None, "DPO: the policy's summed log-probability of the chosen responses"]]
    rejected_logp: NotRequired[Annotated[float | None, "DPO: the same of the rejected responses"]]
    reward_margin: NotRequired[Annotated[float | None, "DPO: β-scaled reward, chosen's minus rejected's"]]
    reward_accuracy: NotRequired[Annotated[float | None, "DPO: share of pairs with a positive margin"]]


class HealthEvent(TypedDict):
    """Per-block gradient, weight and update norms, at every evaluation step (before moe and eval)."""
    kind: Literal["health"]
    step: int
    layers: Annotated[list[HealthLayer], "one per transformer block, encoder first"]


class MoeEvent(TypedDict):
    """Expert load of a training batch (models with experts: every 10th step and every eval step)."""
    kind: Literal["moe"]
    step: int
    layers: Annotated[list[MoeLayer], "one per MoE layer"]


class EvalEvent(TypedDict):
    """Held-out evaluation, every ``eval_interval`` steps and at the last."""
    kind: Literal["eval"]
    step: int
    train_loss: Annotated[float | None, "loss on training batches"]
    val_loss: Annotated[float | None, "loss on held-out batches (DPO: the DPO loss)"]
    accuracy: Annotated[float | None, "the family's held-out score: exact match of synthetic answers, masked "
                                      "tokens recovered (encoder), reward accuracy (DPO); None where not scored"]
    sample: Sample
    chosen_logp: NotRequired[float | None]
    rejected_logp: NotRequired[float | None]
    reward_margin: NotRequired[Annotated[float | None, "DPO: as in the step event, held out"]]
    reward_accuracy: NotRequired[float | None]


class AttentionEvent(TypedDict):
    """Every layer's and head's attention weights on one held-out example, right after each eval
    (unless ``attention_maps`` is off); see ``engine.attention_maps``."""
    kind: Literal["attention"]
    step: int
    tokens: Annotated[list[str], "labels of the window's (decoder) tokens"]
    window: Annotated[list[int], "[start, end) of the tokens shown"]
    source_tokens: NotRequired[Annotated[list[str], "encoder-decoder: the source's labels"]]
    source_window: NotRequired[list[int]]
    stacks: Annotated[dict[str, AttentionStack], "by stack name"]
    input: NotRequired[Annotated[AttentionInput, "long inputs: the ids, for zooming in"]]


class RoutingEvent(TypedDict):
    """Each MoE layer's top-k experts per token of the attention event's example (experts only,
    after each eval and attention event); see ``engine.moe_maps``."""
    kind: Literal["routing"]
    step: int
    tokens: list[str]
    window: list[int]
    source_tokens: NotRequired[list[str]]
    source_window: NotRequired[list[int]]
    top_k: int
    n_expert: int
    layers: list[RoutingLayer]


class NonfiniteEvent(TypedDict):
    """A step whose loss or gradient norm was NaN or infinite, and what ``on_nonfinite`` did."""
    kind: Literal["nonfinite"]
    step: int
    action: Literal["skip", "lower_lr", "stop"]
    message: str


class CheckpointEvent(TypedDict):
    """A checkpoint was written (training with a ``checkpoint_dir``)."""
    kind: Literal["checkpoint"]
    step: int
    name: Annotated[str, 'its folder, "step-000100"']
    bytes: Annotated[int, "its size on disk"]


class EndEvent(TypedDict):
    """The work ended (every job kind); the job's status comes after, as a status event."""
    kind: Literal["end"]
    reason: Annotated[Literal["completed", "cancelled", "nonfinite", "finished"],
                      'training: "completed", "cancelled" or "nonfinite"; inference, tokenizers and chat: '
                      '"finished"; a cancelled inference, tokenizer or chat job: "cancelled"']
    elapsed: Annotated[float, "seconds since the start"]
    step: NotRequired[Annotated[int, "the last step done (absent when an inference, tokenizer or chat job is cancelled)"]]
    final_val_loss: NotRequired[Annotated[float | None, "training: the last evaluation's (None before any)"]]
    vocab_size: NotRequired[Annotated[int, "a tokenizer job: the trained vocabulary"]]


class ProgressEvent(TypedDict):
    """An inference or tokenizer job's progress, at most every 0.25 s."""
    kind: Literal["progress"]
    fraction: Annotated[float, "share of the job done, 0 to 1"]
    step: Annotated[int, "the same in percent"]
    elapsed: float
    eta: Annotated[float | None, "seconds left (None before any progress)"]
    phase: NotRequired[Annotated[str, 'inference: "generation", "quantization" or "done"']]
    detail: NotRequired[Annotated[str, "inference: what it is doing"]]


class GenerationEvent(TypedDict):
    """An inference job's completions (``engine.run_inference``'s result; encoders: embeddings)."""
    kind: Literal["generation"]
    family: str
    batches: Annotated[list[list[int]], "prompt indices decoded together"]
    results: Annotated[list[dict[str, Any]], "per prompt: tokens with probabilities and alternatives, "
                                             "or an encoder's embedding norm"]
    measurements: Annotated[dict[str, dict[str, Any]], '"with_cache", "without_cache" or "forward": '
                                                       "ttft_s, tokens_per_s, peak memory..."]
    settings: NotRequired[Annotated[dict[str, Any], "decoders: the sampling settings"]]
    same_tokens: NotRequired[Annotated[bool | None, "decoders: whether cached and uncached decoding agreed"]]
    similarity: NotRequired[Annotated[list[list[float]], "encoders: cosine similarity of the prompts' embeddings"]]
    embedding_dim: NotRequired[Annotated[int, "encoders"]]


class QuantizationEvent(TypedDict):
    """An inference job's quantisation table and the prompts through each quantised model."""
    kind: Literal["quantization"]
    rows: Annotated[list[dict[str, Any]], "per method: bits, weight bytes, perplexity and its change, tokens/s"]
    generations: NotRequired[Annotated[list[dict[str, Any]], "per method: completions, same_tokens_fraction"]]
    data: NotRequired[Annotated[str, "the held-out data measured"]]
    eval_tokens: NotRequired[int]
    window: NotRequired[Annotated[int, "the perplexity windows' length in tokens"]]
    group_size: NotRequired[int]
    decode_tokens: NotRequired[int]
    prompt_tokens: NotRequired[int]
    error: NotRequired[Annotated[str, "why there is no table"]]


class Alternative(TypedDict):
    """One of the likeliest tokens at a decoding step."""
    id: int
    text: str
    prob: Annotated[float, "its probability (softmax at temperature 1, before top-k and top-p)"]


class TokenEvent(TypedDict):
    """A chat turn's token, sent as soon as it is sampled (the answer streams token by token)."""
    kind: Literal["token"]
    index: Annotated[int, "its place in the answer, from 0"]
    id: Annotated[int, "the token id"]
    text: Annotated[str, "the token's text"]
    prob: Annotated[float, "the probability the model gave it (softmax at temperature 1)"]
    alternatives: Annotated[list[Alternative], "the likeliest tokens at this step, likeliest first"]
    end_of_turn: NotRequired[Annotated[bool, "the model's end-of-turn token (the answer's last)"]]


class ReplyEvent(TypedDict):
    """A chat turn's finished answer (after its last token event)."""
    kind: Literal["reply"]
    message: Annotated[int, "the assistant message's id in its conversation"]
    text: Annotated[str, "the answer as text, without the end-of-turn token"]
    stopped_by: Annotated[Literal["end_of_turn", "max_tokens", "stop"],
                          "the model ended its turn, or max_new_tokens was reached"]
    n_prompt_tokens: Annotated[int, "the conversation's tokens in the chat template, read before answering"]
    n_new_tokens: Annotated[int, "tokens generated (the end-of-turn token included)"]
    ttft_s: Annotated[float | None, "seconds to the first token (the prompt's prefill and the first sample)"]
    tokens_per_s: Annotated[float | None, "new tokens per second over the whole answer"]


class HeadMaps(TypedDict):
    """Every layer's and head's map of a long input, pooled into blocks, on a log colour scale."""
    shape: Annotated[list[int], "[n_layer, n_head, N, N]"]
    block: Annotated[int, "positions per cell, queries and keys"]
    encoding: Annotated[Literal["uint8-log-base64"], "base64 of uint8: 0 below 1e-5, else "
                                                     "1 + round(254·(log10 w + 5) / 5), row-major"]
    maps: Annotated[str, "the pooled maps (a cell: the mean over its queries of the mass its keys get)"]


class AttentionTokensEvent(TypedDict):
    """An attention job's forward has passed its first layer: a head's full map can be fetched
    (``/api/v1/jobs/{id}/attention/head``) as soon as the forward has passed its layer (a 409 before),
    while the rest of the forward and then every head's statistics are computed."""
    kind: Literal["attention_tokens"]
    n_tokens: int
    n_layer: int
    n_head: int
    n_kv_head: int
    tokens: Annotated[list[str], "every token's label, from the model's own tokenizer"]
    seconds: Annotated[float, "the first layer's forward, in the worker"]


class AttentionHeadsEvent(TypedDict):
    """An attention job's analysis of one text: each head's statistics over its full-resolution map
    and every head pooled; see ``engine.introspect.attention_stats``."""
    kind: Literal["attention_heads"]
    n_tokens: int
    n_layer: int
    n_head: int
    n_kv_head: int
    stats: Annotated[dict[str, list[list[float]]], "per statistic ([n_layer][n_head]): entropy (nats), "
                                                   "entropy_norm, distance (tokens), first_token, self_token"]
    overview: HeadMaps
    seconds: Annotated[float, "the forward and the statistics, in the worker"]


class Answer(TypedDict):
    prompt: str
    answer: Annotated[str, "the model's greedy answer through its chat template, up to its end of turn"]
    seconds: Annotated[float, "time to generate it"]


class AnswersEvent(TypedDict):
    """A fine-tuning job's answers to its prompts: before training, then after."""
    kind: Literal["answers"]
    phase: Literal["before", "after"]
    step: Annotated[int, "steps trained (0 before)"]
    answers: list[Answer]
    max_new_tokens: int


class AdapterEvent(TypedDict):
    """A fine-tuning job saved what it trained (a LoRA adapter, or a full fine-tune's weights)."""
    kind: Literal["adapter"]
    step: int
    method: Annotated[Literal["lora", "full"], "LoRA adapters or all weights"]
    files: Annotated[list[str], "the files written (adapter_model.safetensors, adapter.json)"]
    bytes: Annotated[int, "their size on disk"]
    trainable: Annotated[int, "parameters trained"]
    total: Annotated[int, "parameters of the model with its adapters"]


class LoadPointEvent(TypedDict):
    """A serving load test's measurement at one arrival rate under one batching policy
    (``explorer.serving.loadtest``'s summary of what its clients saw)."""
    kind: Literal["load_point"]
    policy: Annotated[Literal["continuous", "static"], "the serving process's batching policy during it"]
    rate: Annotated[float, "offered requests per second (Poisson arrivals)"]
    index: Annotated[int, "the point's place in the run, from 0"]
    summary: Annotated[dict[str, Any], "output_tokens_per_s, requests/completed/refused/errors, refused_share, "
                                       "ttft_s/tpot_s/itl_s/e2e_s as {p50, p99, mean}, output_tokens, duration_s"]


class StatusEvent(TypedDict):
    """The app moved the job to a status (written by the web, the worker and the reaper)."""
    kind: Literal["status"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    queue: NotRequired[Annotated[str, "queued: the queue it waits in"]]
    attempt: NotRequired[Annotated[int, "a retry: the attempt it starts"]]
    resume_from_step: NotRequired[Annotated[int, "a retry: the checkpoint's step (0: from the start)"]]
    reason: NotRequired[Annotated[str, "a retry: why"]]
    error: NotRequired[Annotated[str, "failed: why"]]
    worker: NotRequired[Annotated[str, "running: the worker's name"]]
    device: NotRequired[str]


class QueueEvent(TypedDict):
    """A maintainer changed a queued job's priority or place."""
    kind: Literal["queue"]
    priority: NotRequired[Annotated[int, "the new priority's value"]]
    priority_name: NotRequired[Annotated[str, '"low", "normal", "high"...']]
    reordered: Annotated[bool, "moved to the top of its route"]


class LostEvent(TypedDict):
    """A number a dead worker may have sent live but never saved (``explorer.jobs.recorder.fill_unsaved``)."""
    kind: Literal["lost"]
    note: str


Event = (StartEvent | StepEvent | HealthEvent | MoeEvent | EvalEvent | AttentionEvent | RoutingEvent
         | NonfiniteEvent | CheckpointEvent | EndEvent | ProgressEvent | GenerationEvent | QuantizationEvent
         | TokenEvent | ReplyEvent | AttentionTokensEvent | AttentionHeadsEvent | AnswersEvent | AdapterEvent
         | LoadPointEvent | StatusEvent | QueueEvent | LostEvent)


@dataclass(frozen=True)
class EventKind:
    """A kind's definition and what the app does with it."""
    type: type  # its TypedDict
    emitted_by: tuple[str, ...]  # "train", "finetune", "inference", "tokenizer", "chat", "attention", "serving-load" (the job's work) or "app"
    saved_at_once: bool = False  # a milestone: the log must hold everything up to it at once
    summary: tuple[str, ...] = ()  # keys the job row's summary keeps the latest value of

    @property
    def doc(self) -> str:
        return " ".join((self.type.__doc__ or "").split())


EVENTS: dict[str, EventKind] = {
    "start": EventKind(StartEvent, ("train", "finetune", "inference", "tokenizer", "chat", "attention", "serving-load"),
                       saved_at_once=True,
                       summary=("params", "vocab_size", "tokens_per_step")),
    "step": EventKind(StepEvent, ("train", "finetune"),
                      summary=("loss", "lr", "grad_norm", "tokens_per_s", "elapsed", "eta", "aux_loss", "mfu")),
    "health": EventKind(HealthEvent, ("train",)),
    "moe": EventKind(MoeEvent, ("train",)),
    "eval": EventKind(EvalEvent, ("train", "finetune"), summary=("train_loss", "val_loss", "accuracy")),
    "attention": EventKind(AttentionEvent, ("train",)),
    "routing": EventKind(RoutingEvent, ("train",)),
    "nonfinite": EventKind(NonfiniteEvent, ("train",)),
    "checkpoint": EventKind(CheckpointEvent, ("train",), saved_at_once=True),
    "end": EventKind(EndEvent, ("train", "finetune", "inference", "tokenizer", "chat", "attention", "serving-load"),
                     saved_at_once=True),
    "progress": EventKind(ProgressEvent, ("inference", "tokenizer", "attention", "serving-load")),
    "generation": EventKind(GenerationEvent, ("inference",)),
    "quantization": EventKind(QuantizationEvent, ("inference",)),
    "token": EventKind(TokenEvent, ("chat",)),
    "reply": EventKind(ReplyEvent, ("chat",), summary=("tokens_per_s", "ttft_s", "n_new_tokens")),
    "attention_tokens": EventKind(AttentionTokensEvent, ("attention",)),
    "attention_heads": EventKind(AttentionHeadsEvent, ("attention",)),
    "answers": EventKind(AnswersEvent, ("finetune",), saved_at_once=True),
    "adapter": EventKind(AdapterEvent, ("finetune",), saved_at_once=True),
    "load_point": EventKind(LoadPointEvent, ("serving-load",), saved_at_once=True),
    "status": EventKind(StatusEvent, ("app",)),
    "queue": EventKind(QueueEvent, ("app",)),
    "lost": EventKind(LostEvent, ("app",)),
}

KINDS = tuple(EVENTS)
SAVED_AT_ONCE = frozenset(k for k, e in EVENTS.items() if e.saved_at_once)
SUMMARY_KEYS = {k: e.summary for k, e in EVENTS.items() if e.summary}


# ---------------------------------------------------------------------------- reading the types
def _hints(td: type) -> dict[str, Any]:
    return typing.get_type_hints(td, include_extras=True)


def _unwrap(tp) -> tuple[Any, str]:
    """(the type without NotRequired/Required/Annotated, its description or "")."""
    doc = ""
    while True:
        origin = typing.get_origin(tp)
        if origin in (NotRequired, typing.Required):
            tp = typing.get_args(tp)[0]
        elif origin is Annotated:
            doc = doc or next((m for m in tp.__metadata__ if isinstance(m, str)), "")
            tp = typing.get_args(tp)[0]
        else:
            return tp, doc


def _is_typeddict(tp) -> bool:
    return isinstance(tp, type) and typing.is_typeddict(tp)


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _check(value, tp, where: str, problems: list[str]) -> None:
    tp, _ = _unwrap(tp)
    if tp is Any:
        return
    if _is_union(tp):
        for option in typing.get_args(tp):
            trial: list[str] = []
            _check(value, option, where, trial)
            if not trial:
                return
        problems.append(f"{where}: {value!r:.60} is not {_type_name(tp)}")
        return
    if tp is None or tp is type(None):
        if value is not None:
            problems.append(f"{where}: expected None, got {value!r:.60}")
        return
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            problems.append(f"{where}: {value!r:.60} is not one of {list(typing.get_args(tp))}")
        return
    if _is_typeddict(tp):
        _check_fields(value, tp, where, problems)
        return
    if origin is list:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return
        (item,) = typing.get_args(tp)
        for i, v in enumerate(value):
            _check(v, item, f"{where}[{i}]", problems)
        return
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected an object, got {type(value).__name__}")
            return
        _, item = typing.get_args(tp)
        for k, v in value.items():
            if not isinstance(k, str):
                problems.append(f"{where}: key {k!r} is not a string")
            _check(v, item, f"{where}.{k}", problems)
        return
    # JSON's scalars: a bool is not a number here, an int is a float
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(tp)
    if ok is None:
        raise TypeError(f"{where}: the contract uses a type it cannot check: {tp!r}")
    if not ok(value):
        problems.append(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r:.60}")
    elif tp is float and not math.isfinite(value):
        problems.append(f"{where}: {value} is not finite (send None)")


def _check_fields(value, td: type, where: str, problems: list[str]) -> None:
    if not isinstance(value, Mapping):
        problems.append(f"{where}: expected an object, got {type(value).__name__}")
        return
    hints = _hints(td)
    for key in sorted(td.__required_keys__ - value.keys()):
        problems.append(f"{where}: missing {key!r}")
    for key in value.keys() - hints.keys():
        problems.append(f"{where}: unexpected key {key!r}")
    for key, v in value.items():
        if key in hints:
            _check(v, hints[key], f"{where}.{key}" if where else key, problems)


def validate(event: Mapping) -> list[str]:
    """What in ``event`` (a dict with "kind") breaks the contract; [] when nothing does."""
    if not isinstance(event, Mapping):
        return [f"an event is an object, not {type(event).__name__}"]
    kind = event.get("kind")
    if kind not in EVENTS:
        return [f"unknown event kind {kind!r}; choose from {sorted(EVENTS)}"]
    problems: list[str] = []
    _check_fields(event, EVENTS[kind].type, kind, problems)
    return problems


def check(event: Mapping) -> Mapping:
    """``event`` itself when it keeps the contract; ValueError naming every problem otherwise."""
    problems = validate(event)
    if problems:
        raise ValueError("; ".join(problems))
    return event


def validate_message(message: Mapping) -> list[str]:
    """``validate`` for an event as stored and sent: ``{"seq", "kind", "ts", "data"}``."""
    return validate({"kind": message.get("kind"), **(message.get("data") or {})})


# ---------------------------------------------------------------------------- JSON Schema
def _type_name(tp) -> str:
    tp, _ = _unwrap(tp)
    if tp is None or tp is type(None):
        return "None"
    if _is_union(tp):
        return " | ".join(_type_name(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return " | ".join(json.dumps(v) for v in typing.get_args(tp))
    if typing.get_origin(tp) in (list, dict):
        return f"{typing.get_origin(tp).__name__}[{', '.join(_type_name(t) for t in typing.get_args(tp))}]"
    return getattr(tp, "__name__", repr(tp))


def _schema(tp, defs: dict) -> dict:
    tp, doc = _unwrap(tp)
    out: dict
    if tp is Any:
        out = {}
    elif tp is None or tp is type(None):
        out = {"type": "null"}
    elif _is_union(tp):
        out = {"anyOf": [_schema(t, defs) for t in typing.get_args(tp)]}
    elif typing.get_origin(tp) is Literal:
        values = list(typing.get_args(tp))
        out = {"const": values[0]} if len(values) == 1 else {"enum": values}
    elif _is_typeddict(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # (a recursive type would find its name)
            defs[tp.__name__] = _object_schema(tp, defs)
        out = {"$ref": f"#/$defs/{tp.__name__}"}
    elif typing.get_origin(tp) is list:
        out = {"type": "array", "items": _schema(typing.get_args(tp)[0], defs)}
    elif typing.get_origin(tp) is dict:
        out = {"type": "object", "additionalProperties": _schema(typing.get_args(tp)[1], defs)}
    else:
        out = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]}
    if doc:
        out = {**out, "description": doc} if "$ref" not in out else {"allOf": [out], "description": doc}
    return out


def _object_schema(td: type, defs: dict) -> dict:
    hints = _hints(td)
    return {
        "type": "object",
        "description": " ".join((td.__doc__ or "").split()),
        "properties": {key: _schema(tp, defs) for key, tp in hints.items()},
        "required": [key for key in hints if key in td.__required_keys__],
        "additionalProperties": False,
    }


def event_schema() -> dict:
    """The contract as a JSON Schema (draft 2020-12): one of the kinds' objects, discriminated
    by "kind"; ``x-kinds`` lists each kind's emitters, whether the app saves it at once and the
    keys its summary keeps."""
    defs: dict = {}
    one_of = [_schema(e.type, defs) for e in EVENTS.values()]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Job events",
        "description": "An event a job emits; stored and sent as {seq, kind, ts, data}, data being the event "
                       "without its kind. Numbers are finite (NaN and infinities are sent as null).",
        "oneOf": one_of,
        "$defs": defs,
        "x-kinds": {kind: {"emitted_by": list(e.emitted_by), "saved_at_once": e.saved_at_once,
                           "summary": list(e.summary), "description": e.doc}
                    for kind, e in EVENTS.items()},
    }


def markdown() -> str:
    """``docs/events.md``: a table of every kind's keys, from the definitions."""
    lines = ["# Job events", "",
             "<!-- generated by `python -m engine.config.events --markdown > docs/events.md`; edit engine/config/events.py -->", "",
             *(" ".join(paragraph.split()) + "\n" for paragraph in (__doc__ or "").split("\n\n")[:3]),
             "| kind | emitted by | saved at once | summary keys |", "| --- | --- | --- | --- |"]
    for kind, e in EVENTS.items():
        lines.append(f"| [`{kind}`](#{kind}) | {', '.join(e.emitted_by)} | {'yes' if e.saved_at_once else ''} "
                     f"| {', '.join(f'`{k}`' for k in e.summary)} |")
    nested: list[type] = []
    for kind, e in EVENTS.items():
        lines += ["", f"## {kind}", "", e.doc, ""]
        lines += _field_table(e.type, nested, skip=("kind",))
    lines += ["", "## Nested objects"]
    seen: set[type] = set()
    while nested:
        td = nested.pop(0)
        if td in seen:
            continue
        seen.add(td)
        lines += ["", f"### {td.__name__}", "", " ".join((td.__doc__ or "").split()), ""]
        lines += _field_table(td, nested)
    return "\n".join(lines) + "\n"


def _field_table(td: type, nested: list[type], skip=()) -> list[str]:
    rows = ["| key | type | required | meaning |", "| --- | --- | --- | --- |"]
    for key, tp in _hints(td).items():
        if key in skip:
            continue
        bare, doc = _unwrap(tp)
        nested.extend(t for t in _typeddicts(bare))
        name, doc = _type_name(bare).replace("|", "\\|"), doc.replace("|", "\\|")
        required = "yes" if key in td.__required_keys__ else ""
        rows.append(f"| `{key}` | `{name}` | {required} | {doc} |")
    return rows


def _typeddicts(tp) -> list[type]:
    tp, _ = _unwrap(tp)
    if _is_typeddict(tp):
        return [tp]
    return [t for arg in typing.get_args(tp) for t in _typeddicts(arg)]


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(markdown())
    else:
        json.dump(event_schema(), sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
