"""``ATTENTIONS`` (config ``attention``): the registered kinds by name, and adding, removing and
describing them at run time."""

from __future__ import annotations

from .base import AttentionKind
from .linear import LinearAttention
from .masked import (
    BlockSparseAttention,
    DilatedAttention,
    FullAttention,
    LocalGlobalAttention,
    SlidingAttention,
    _cached_mask,
)

ATTENTIONS = {
    "full": FullAttention,
    "sliding": SlidingAttention,
    "local_global": LocalGlobalAttention,
    "dilated": DilatedAttention,
    "block_sparse": BlockSparseAttention,
    "linear": LinearAttention,
}
_BUILT_IN = frozenset(ATTENTIONS)


def register_attention(name: str, cls: type[AttentionKind]) -> None:
    """Add an attention kind at run time (a plugin, a test), as transformers'
    ``AttentionInterface.register`` adds a kernel: validation, ``choices()``, ``field_specs()``
    (its ``help`` and ``fields``), ``analyze``, ``structure``, the web app's options and charts
    and training find it at once. A kind shipped with the engine goes in ``ATTENTIONS`` above."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"an attention kind's name must be an identifier, got {name!r}")
    if name in ATTENTIONS:
        raise ValueError(f"attention {name!r} is already registered; choose a name not in {list(ATTENTIONS)}")
    if not (isinstance(cls, type) and issubclass(cls, AttentionKind)):
        raise TypeError(f"attention {name!r} must be a subclass of AttentionKind (MaskedAttention for a "
                        f"softmax over a mask), got {cls!r}")
    ATTENTIONS[name] = cls


def unregister_attention(name: str) -> None:
    """Remove a kind ``register_attention`` added; the engine's own cannot be removed."""
    if name in _BUILT_IN:
        raise ValueError(f"attention {name!r} is built in; only registered kinds can be removed")
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; registered: {[k for k in ATTENTIONS if k not in _BUILT_IN]}")
    del ATTENTIONS[name]
    _cached_mask.cache_clear()  # no mask of the removed class outlives it


def attention_kinds(*, has_scores: bool | None = None, reads: str | None = None) -> list[str]:
    """The registered kinds in order, or those with (without) softmax scores, or those that read
    the config field ``reads``: the composer's ``show_if`` lists, asked when the form is built."""
    return [name for name, cls in ATTENTIONS.items()
            if (has_scores is None or cls.has_scores == has_scores) and (reads is None or reads in cls.fields)]


def describe_attentions() -> list[dict]:
    """Each registered kind for the web app's options and charts: ``name``, colour token, help
    phrase, whether it has softmax scores and the config fields it reads."""
    return [{"name": name, "color": cls.color, "help": cls.help or name, "has_scores": cls.has_scores,
             "fields": list(cls.fields)} for name, cls in ATTENTIONS.items()]


def attention_help() -> str:
    """The composer's help on ``attention``, one phrase per registered kind."""
    phrases = [cls.help or name for name, cls in ATTENTIONS.items()]
    listed = ", ".join(phrases[:-1]) + ", or " + phrases[-1] if len(phrases) > 1 else phrases[0]
    return f"Which earlier tokens each query sees (in an encoder, the same pattern on both sides): {listed}."
