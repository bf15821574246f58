"""Weights in and out of ``transformers`` for the encoder families: BERT and T5.

The same mapping classes as ``engine.interop`` (``model_type``, ``hf_class`` and the four
methods ``problems``, ``hf_config``, ``engine_config``, ``tensors``), so ``to_transformers`` and
``from_transformers`` handle them once they are entries of ``interop.MAPPINGS``.

- ``Bert`` <-> ``BertForMaskedLM``: post-norm LayerNorm blocks, exact GELU, learned absolute
  positions, token-type embeddings (``n_token_type``), BERT's MLM head. ``load_bert_body``
  fills just the encoder from a ``BertModel`` (which has no MLM head; its pooler is not ours).
- ``T5`` <-> ``T5ForConditionalGeneration``: T5's relative bias, RMSNorm, no biases, ReLU
  (v1.0) or tanh-GELU gated (v1.1 "gated-gelu" = our "geglu") FFN. T5 does not divide scores by
  √head_size (its initialisation absorbs it); ours does, so our q projections hold T5's
  multiplied by √head_size. transformers 5 ties T5's output layer to the shared embedding
  whatever the config says; ``tie_word_embeddings`` only decides the n_embd**-0.5 scaling of
  the decoder output. So our tied head (scaled) maps to ``tie_word_embeddings=True``, and an
  imported ``False`` model becomes our untied, unscaled head holding the same matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.encoder_decoder import n_decoder_layer
from ..nn.ffn import FFNS
from .common import Tensor, _ffn_width, _need


@dataclass(frozen=True)
class ScaledTensor(Tensor):
    """A ``Tensor`` whose values differ by a constant factor: ours = ``scale`` × HF's."""

    scale: float = 1.0

    def to_hf(self, sd: dict) -> torch.Tensor:
        return super().to_hf(sd) / self.scale

    def from_hf(self, t: torch.Tensor, shapes: dict) -> dict:
        return super().from_hf(t * self.scale, shapes)


def _plain_problems(cfg, family: str) -> list[str]:
    """Features neither BERT nor T5 has."""
    p = []
    _need(cfg, "family", family, p)
    _need(cfg, "attention", "full", p)
    _need(cfg, "n_kv_head", (None, cfg.n_head), p)
    _need(cfg, "n_expert", 0, p)
    _need(cfg, "qk_norm", False, p)
    _need(cfg, "attn_softcap", 0.0, p)
    _need(cfg, "final_softcap", 0.0, p)
    _need(cfg, "qkv_bias", False, p)
    _need(cfg, "embed_scale", False, p)
    _need(cfg, "query_pre_attn_scalar", (None, cfg.head_size), p)
    return p


# ---------------------------------------------------------------------------- BERT


class Bert:
    """BERT (Devlin et al. 2019): post-norm, LayerNorm after the embeddings, exact GELU, learned
    positions plus token-type embeddings, biases everywhere, MLM head dense -> GELU -> LayerNorm
    -> vocabulary (+ bias)."""

    model_type = "bert"
    hf_class = "BertForMaskedLM"

    @staticmethod
    def problems(cfg) -> list[str]:
        p = _plain_problems(cfg, "encoder")
        _need(cfg, "head_dim", (None, cfg.n_embd // cfg.n_head), p, "BERT's heads split the width")
        _need(cfg, "norm_placement", "post", p)
        _need(cfg, "norm", "layernorm", p)
        _need(cfg, "position", "learned", p)
        _need(cfg, "ffn", "gelu_exact", p)
        _need(cfg, "bias", True, p)
        if cfg.n_token_type < 1:
            p.append(f"n_token_type={cfg.n_token_type!r} (needs ≥ 1: BERT always has token-type embeddings)")
        return p

    @staticmethod
    def hf_config(cfg) -> dict:
        return dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, intermediate_size=FFNS[cfg.ffn].hidden_dim(cfg), hidden_act="gelu",
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
            max_position_embeddings=cfg.block_size, type_vocab_size=cfg.n_token_type, layer_norm_eps=cfg.norm_eps,
            tie_word_embeddings=cfg.tie_embeddings, pad_token_id=0,
        )

    @staticmethod
    def engine_config(hf) -> dict:
        if hf.hidden_act != "gelu":
            raise ValueError(f"BERT hidden_act {hf.hidden_act!r} is not supported; choose from ['gelu']")
        if getattr(hf, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BERT position_embedding_type {hf.position_embedding_type!r} is not supported; "
                             "choose from ['absolute']")
        if hf.hidden_dropout_prob != hf.attention_probs_dropout_prob:
            raise ValueError("BERT hidden_dropout_prob and attention_probs_dropout_prob must be equal (we have one)")
        cfg = dict(family="encoder", n_layer=hf.num_hidden_layers, n_head=hf.num_attention_heads,
                   n_embd=hf.hidden_size, block_size=hf.max_position_embeddings, vocab_size=hf.vocab_size,
                   dropout=float(hf.hidden_dropout_prob), bias=True, norm="layernorm", norm_placement="post",
                   norm_eps=float(hf.layer_norm_eps), position="learned", ffn="gelu_exact",
                   n_token_type=hf.type_vocab_size, tie_embeddings=bool(getattr(hf, "tie_word_embeddings", True)))
        cfg.update(_ffn_width(cfg, hf.intermediate_size))
        return cfg

    @staticmethod
    def body_tensors(cfg, prefix: str = "bert.") -> list[Tensor]:
        """The encoder's tensors (what ``BertModel`` holds, under ``prefix``)."""
        e = f"{prefix}embeddings."
        t = [Tensor(f"{e}word_embeddings.weight", ("wte.weight",)),
             Tensor(f"{e}position_embeddings.weight", ("wpe.weight",)),
             Tensor(f"{e}token_type_embeddings.weight", ("wtt.weight",)),
             Tensor(f"{e}LayerNorm.weight", ("ln_emb.weight",)),
             Tensor(f"{e}LayerNorm.bias", ("ln_emb.bias",))]
        for i in range(cfg.n_layer):
            hf, us = f"{prefix}encoder.layer.{i}.", f"h.{i}."
            for theirs, ours in [("attention.self.query", "attn.q_proj"), ("attention.self.key", "attn.k_proj"),
                                 ("attention.self.value", "attn.v_proj"), ("attention.output.dense", "attn.o_proj"),
                                 ("attention.output.LayerNorm", "ln_1"), ("intermediate.dense", "mlp.up_proj"),
                                 ("output.dense", "mlp.down_proj"), ("output.LayerNorm", "ln_2")]:
                t += [Tensor(f"{hf}{theirs}.weight", (f"{us}{ours}.weight",)),
                      Tensor(f"{hf}{theirs}.bias", (f"{us}{ours}.bias",))]
        return t

    @classmethod
    def tensors(cls, cfg) -> list[Tensor]:
        # a tied head is also in our state dict under its own name, so it takes the value too
        c = "cls.predictions."
        return cls.body_tensors(cfg) + [
            Tensor(f"{c}transform.dense.weight", ("head.dense.weight",)),
            Tensor(f"{c}transform.dense.bias", ("head.dense.bias",)),
            Tensor(f"{c}transform.LayerNorm.weight", ("head.norm.weight",)),
            Tensor(f"{c}transform.LayerNorm.bias", ("head.norm.bias",)),
            Tensor(f"{c}decoder.weight", ("head.lm_head.weight",)),
            Tensor(f"{c}decoder.bias", ("head.lm_head.bias",)),
            Tensor(f"{c}bias", ("head.lm_head.bias",)),  # the same parameter as decoder.bias
        ]


def load_bert_body(model, state_dict: dict, prefix: str = "") -> None:
    """Copy a ``BertModel`` state dict (keys under ``prefix``, "" for a bare BertModel file such
    as a sentence-transformers checkpoint) into our ``Encoder``'s body, in place. Every body
    parameter must be there; the MLM head keeps its values, the pooler is ignored."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd = {}
    for t in Bert.body_tensors(model.config, prefix):
        if t.hf not in state_dict:
            raise KeyError(f"{t.hf} is missing from the BERT weights")
        sd.update({k: v.detach().cpu().clone() for k, v in t.from_hf(state_dict[t.hf], shapes).items()})
    model.load_state_dict(sd, strict=False)


# ---------------------------------------------------------------------------- T5

# our ffn -> T5's feed_forward_proj
T5_FFNS = {"relu": "relu", "geglu": "gated-gelu"}


class T5:
    """T5 (Raffel et al. 2020): pre-norm RMSNorm ("T5LayerNorm"), relative position bias in the
    first layer of each stack shared by the rest, no biases, no score scaling, ReLU or gated
    tanh-GELU FFN, one embedding for both stacks."""

    model_type = "t5"
    hf_class = "T5ForConditionalGeneration"

    @staticmethod
    def problems(cfg) -> list[str]:
        p = _plain_problems(cfg, "encoder_decoder")
        _need(cfg, "norm_placement", "pre", p)
        _need(cfg, "norm", "rmsnorm", p)
        _need(cfg, "position", "t5_relative", p)
        _need(cfg, "ffn", tuple(T5_FFNS), p)
        _need(cfg, "bias", False, p)
        _need(cfg, "tie_embeddings", True, p, "transformers 5 always ties T5's output layer to its embedding")
        return p

    @staticmethod
    def hf_config(cfg) -> dict:
        return dict(
            vocab_size=cfg.vocab_size, d_model=cfg.n_embd, d_kv=cfg.head_size,
            d_ff=FFNS[cfg.ffn].hidden_dim(cfg), num_layers=cfg.n_layer, num_decoder_layers=n_decoder_layer(cfg),
            num_heads=cfg.n_head, relative_attention_num_buckets=cfg.relative_attention_num_buckets,
            relative_attention_max_distance=cfg.relative_attention_max_distance, dropout_rate=cfg.dropout,
            layer_norm_epsilon=cfg.norm_eps, feed_forward_proj=T5_FFNS[cfg.ffn],
            tie_word_embeddings=cfg.tie_embeddings, decoder_start_token_id=0, pad_token_id=0, eos_token_id=None,
        )

    @staticmethod
    def engine_config(hf) -> dict:
        ffns = {v: k for k, v in T5_FFNS.items()}
        if hf.feed_forward_proj not in ffns:
            raise ValueError(f"T5 feed_forward_proj {hf.feed_forward_proj!r} is not supported; "
                             f"choose from {list(ffns)}")
        cfg = dict(family="encoder_decoder", n_layer=hf.num_layers, n_head=hf.num_heads, n_embd=hf.d_model,
                   block_size=512, vocab_size=hf.vocab_size, dropout=float(hf.dropout_rate), bias=False,
                   norm="rmsnorm", norm_placement="pre", norm_eps=float(hf.layer_norm_epsilon),
                   position="t5_relative", relative_attention_num_buckets=hf.relative_attention_num_buckets,
                   relative_attention_max_distance=hf.relative_attention_max_distance, ffn=ffns[hf.feed_forward_proj],
                   tie_embeddings=bool(getattr(hf, "scale_decoder_outputs", hf.tie_word_embeddings)))
        n_dec = hf.num_decoder_layers or hf.num_layers
        cfg["n_decoder_layer"] = None if n_dec == hf.num_layers else n_dec
        cfg["head_dim"] = None if hf.d_kv * hf.num_heads == hf.d_model else hf.d_kv  # T5-v1.1 XL: 32 × 64 ≠ 2048
        cfg.update(_ffn_width(cfg, hf.d_ff))
        return cfg

    @staticmethod
    def _ffn(cfg, hf: str, us: str) -> list[Tensor]:
        names = [("wi_0", "gate_proj"), ("wi_1", "up_proj")] if cfg.ffn == "geglu" else [("wi", "up_proj")]
        names.append(("wo", "down_proj"))
        return [Tensor(f"{hf}DenseReluDense.{a}.weight", (f"{us}mlp.{b}.weight",)) for a, b in names]

    @staticmethod
    def _attention(cfg, hf: str, us: str) -> list[Tensor]:
        # ours divides q·k by √head_size, T5 does not: our q is T5's times √head_size
        root = math.sqrt(cfg.head_size)
        return [ScaledTensor(f"{hf}q.weight", (f"{us}q_proj.weight",), scale=root)] + [
            Tensor(f"{hf}{n}.weight", (f"{us}{n}_proj.weight",)) for n in ("k", "v", "o")]

    @classmethod
    def tensors(cls, cfg) -> list[Tensor]:
        t = [Tensor("shared.weight", ("wte.weight",)),
             Tensor("encoder.embed_tokens.weight", ("wte.weight",)),
             Tensor("decoder.embed_tokens.weight", ("wte.weight",)),
             Tensor("lm_head.weight", ("lm_head.weight",)),
             Tensor("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                    ("enc_wpe.relative_attention_bias.weight",)),
             Tensor("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                    ("wpe.relative_attention_bias.weight",)),
             Tensor("encoder.final_layer_norm.weight", ("enc_ln_f.weight",)),
             Tensor("decoder.final_layer_norm.weight", ("ln_f.weight",))]
        for i in range(cfg.n_layer):
            hf, us = f"encoder.block.{i}.layer.", f"enc_h.{i}."
            t += cls._attention(cfg, f"{hf}0.SelfAttention.", f"{us}attn.")
            t += [Tensor(f"{hf}0.layer_norm.weight", (f"{us}ln_1.weight",)),
                  Tensor(f"{hf}1.layer_norm.weight", (f"{us}ln_2.weight",))]
            t += cls._ffn(cfg, f"{hf}1.", us)
        for i in range(n_decoder_layer(cfg)):
            hf, us = f"decoder.block.{i}.layer.", f"h.{i}."
            t += cls._attention(cfg, f"{hf}0.SelfAttention.", f"{us}attn.")
            t += cls._attention(cfg, f"{hf}1.EncDecAttention.", f"{us}cross_attn.")
            t += [Tensor(f"{hf}0.layer_norm.weight", (f"{us}ln_1.weight",)),
                  Tensor(f"{hf}1.layer_norm.weight", (f"{us}ln_cross.weight",)),
                  Tensor(f"{hf}2.layer_norm.weight", (f"{us}ln_2.weight",))]
            t += cls._ffn(cfg, f"{hf}2.", us)
        return t
