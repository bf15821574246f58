"""Bring your own model: a GGUF file or a zipped ``transformers`` model directory, checked and
converted into our ``Decoder``, saved as a copy that ``load_imported`` reads as fast as SmolLM2's.

    info = inspect_upload(path, staging_dir, max_unpacked_bytes=...)   # cheap: format, family, config
    meta = convert_upload(info, target_dir)                              # slow: weights, logits check, copy
    model, tokenizer = load_imported(target_dir)

``inspect_upload`` reads only what says what the file is: a GGUF file's metadata (through
``transformers``' GGUF reader, no tensors), or a zip's member list (refusing absolute paths,
``..``, links, pickled weights and more unpacked bytes than allowed), unpacked into ``staging``
with its ``config.json``. The family must be one of ``SUPPORTED`` (the decoders the interop
mappings express); ``config_from_hf`` gives our ``ModelConfig`` without any weights, so a caller
can weigh the model against its workers' memory before converting anything.

``convert_upload`` loads the weights through ``transformers`` (safetensors only, never a pickle;
a GGUF file de-quantised to float32), refuses missing or misshapen tensors, converts with
``from_transformers`` and runs the probe text (``PROBE_TEXT``) through both models: the largest
absolute difference of their logits must stay within ``logits_tolerance(reference)``. The copy is
written as ``load_smollm2``'s is (``tokenlab.write_copy``: a temporary directory beside the target,
renamed into place only once whole): ``model.safetensors``, the tokenizer files, ``engine.json``
(our config, the source, the check). Every refusal is an ``UploadError`` (a ``ValueError``) whose
message says what is wrong and what is accepted.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
import zipfile
from collections import OrderedDict
from pathlib import Path, PurePosixPath

from ..config.errors import ConfigError
from ..config.schema import ModelConfig
from ..tokenlab import import_transformers, write_copy
from .hf_config import config_from_hf

SUPPORTED = ("gpt2", "llama", "mistral", "mixtral", "qwen2")  # HF model_type; GGUF's architecture names
GGUF_MAGIC, ZIP_MAGIC = b"GGUF", b"PK\x03\x04"
IMPORT_FORMAT = "llm-explorer-imported/1"
WEIGHTS_FILE, META_FILE = "model.safetensors", "engine.json"
PROBE_TEXT = ("The quick brown fox jumps over the lazy dog. In 1905, Einstein wrote four papers;\n"
              "def square(x):\n    return x * x\n")
PROBE_MAX_TOKENS = 48
MAX_ZIP_MEMBERS = 256
# weights in any of these formats are pickles (arbitrary code on load): never read
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".h5", ".msgpack")
TOKENIZER_FILES = ("tokenizer.json",)


class UploadError(ValueError):
    """An upload that is not a model we can take, with the reason."""


def logits_tolerance(reference) -> float:
    """The largest absolute logit difference accepted between ours and transformers' for the same
    weights: float32 rounding of two different orders of summation, which grows with the logits'
    scale (1e-3 of their largest magnitude, at least 1e-3)."""
    return 1e-3 * max(1.0, float(reference.abs().max()))


def sniff(path: str | os.PathLike) -> str:
    """``"gguf"`` or ``"zip"`` by the file's first bytes; ``UploadError`` otherwise."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == GGUF_MAGIC:
        return "gguf"
    if head == ZIP_MAGIC:
        return "zip"
    what = "empty" if not head else "neither a GGUF file (it starts with 'GGUF') nor a zip archive"
    raise UploadError(f"the file is {what}: upload a .gguf file, or a transformers model directory "
                      "(config.json, *.safetensors, tokenizer.json) as a .zip")


def _engine_config(hf: dict, what: str) -> ModelConfig:
    model_type = hf.get("model_type") if isinstance(hf, dict) else None
    if model_type not in SUPPORTED:
        kind = {"bert": " (an encoder)", "t5": " (an encoder-decoder)", "gemma2": ""}.get(model_type, "")
        raise UploadError(f"{what}: model_type {model_type!r}{kind} is not supported; "
                          f"choose a decoder of the families {list(SUPPORTED)}")
    try:
        cfg = config_from_hf(hf)
        cfg.validate()
    except ConfigError as exc:
        raise UploadError(f"{what}: {model_type} config outside what our engine builds: "
                          + "; ".join(f"{k}: {v}" for k, v in exc.errors.items())) from None
    except ValueError as exc:
        raise UploadError(f"{what}: {exc}") from None
    return cfg


def _unzip(path: Path, into: Path, max_unpacked_bytes: int) -> Path:
    """Unpack a zipped model directory safely; the directory holding config.json."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > MAX_ZIP_MEMBERS:
                raise UploadError(f"the zip holds {len(infos)} files; a model directory has at most {MAX_ZIP_MEMBERS}")
            total = 0
            for info in infos:
                name = info.filename
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts or not parts:
                    raise UploadError(f"the zip member {name!r} points outside the archive (an absolute path or '..'); "
                                      "refused")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UploadError(f"the zip member {name!r} is a symbolic link; refused")
                if name.lower().endswith(PICKLE_SUFFIXES):
                    raise UploadError(f"the zip member {name!r} holds pickled weights, which can run code when "
                                      "loaded: save the model with safetensors (save_pretrained's default)")
                total += info.file_size
                if total > max_unpacked_bytes:
                    raise UploadError(f"the zip unpacks to more than {max_unpacked_bytes / 2**20:,.0f} MiB, "
                                      "the model upload limit")
            into.mkdir(parents=True, exist_ok=True)
            for info in infos:
                target = into.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)  # a bad CRC raises BadZipFile at the end
    except zipfile.BadZipFile as exc:
        raise UploadError(f"the zip archive is damaged or truncated ({exc})") from None
    configs = sorted(into.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise UploadError("the zip has no config.json: zip the directory transformers' save_pretrained wrote "
                          "(config.json, *.safetensors, tokenizer.json)")
    root = configs[0].parent
    if not list(root.glob("*.safetensors")):
        raise UploadError(f"the zip has no *.safetensors weights beside {configs[0].relative_to(into)}")
    missing = [f for f in TOKENIZER_FILES if not (root / f).is_file()]
    if missing:
        raise UploadError(f"the zip has no {', '.join(missing)}: a model needs its (fast) tokenizer; save it with "
                          "tokenizer.save_pretrained into the same directory")
    return root


def inspect_upload(path: str | os.PathLike, staging: str | os.PathLike, *, max_unpacked_bytes: int) -> dict:
    """What the uploaded file at ``path`` is, without its weights: ``{"format": "gguf" |
    "transformers", "source": the GGUF file or the unpacked directory, "model_type",
    "config": ModelConfig}``. A zip is unpacked into ``staging``; ``UploadError`` says why the
    file is refused."""
    path, staging = Path(path), Path(staging)
    fmt = sniff(path)
    if fmt == "gguf":
        import_transformers("reading a GGUF file")
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        try:
            hf = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
        except Exception as exc:  # noqa: BLE001 - gguf's reader raises anything on a truncated file
            message = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise UploadError(f"the GGUF file cannot be read (damaged, truncated or of an architecture transformers "
                              f"does not read: {message})") from None
        return {"format": "gguf", "source": path, "model_type": hf.get("model_type"),
                "config": _engine_config(hf, "the GGUF file")}
    root = _unzip(path, staging, max_unpacked_bytes)
    try:
        hf = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UploadError(f"config.json is not valid JSON ({exc})") from None
    return {"format": "transformers", "source": root, "model_type": hf.get("model_type") if isinstance(hf, dict)
            else None, "config": _engine_config(hf, "config.json")}


def _load_transformers(info: dict):
    transformers = import_transformers("checking an uploaded model")
    import torch

    source = Path(info["source"])
    try:
        if info["format"] == "gguf":
            kw = {"pretrained_model_name_or_path": str(source.parent), "gguf_file": source.name}
        else:
            kw = {"pretrained_model_name_or_path": str(source), "use_safetensors": True}
        hf_model, loading = transformers.AutoModelForCausalLM.from_pretrained(
            **kw, dtype=torch.float32, output_loading_info=True, local_files_only=True)
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(**kw, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - safetensors, gguf and transformers raise their own types
        message = " ".join(str(exc).split())[:400] or type(exc).__name__
        raise UploadError(f"the weights cannot be loaded ({type(exc).__name__}: {message})") from None
    tied = {"lm_head.weight"} if getattr(hf_model.config, "tie_word_embeddings", False) else set()
    missing = sorted(set(loading.get("missing_keys", ())) - tied)
    mismatched = loading.get("mismatched_keys", ())
    if missing or mismatched:
        raise UploadError(f"the weights do not fit config.json: missing {missing[:5]}, "
                          f"of the wrong shape {[m[0] if isinstance(m, tuple) else m for m in mismatched][:5]}")
    if not getattr(hf_tokenizer, "is_fast", False):
        raise UploadError("the tokenizer is not a fast (tokenizer.json) tokenizer, which our engine reads")
    return hf_model.eval(), hf_tokenizer


def _probe(model, hf_model, hf_tokenizer) -> dict:
    import torch

    ids = hf_tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"][:min(PROBE_MAX_TOKENS,
                                                                             model.config.block_size)]
    if not ids:
        raise UploadError("the tokenizer gives no tokens for the probe text")
    if max(ids) >= model.config.vocab_size:
        raise UploadError(f"the tokenizer gives id {max(ids)}, outside the model's vocabulary of "
                          f"{model.config.vocab_size}")
    idx = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        theirs = hf_model(idx).logits.float()
        ours = model(idx)[0].float()
    if ours.shape != theirs.shape:
        raise UploadError(f"our logits have the shape {tuple(ours.shape)}, transformers' {tuple(theirs.shape)}")
    diff = float((ours - theirs).abs().max())
    tolerance = logits_tolerance(theirs)
    if not diff <= tolerance:  # NaN fails too
        raise UploadError(f"our engine's logits differ from transformers' by up to {diff:.3g} on the probe text "
                          f"(accepted: {tolerance:.3g}): this model uses something our mapping does not express")
    return {"tokens": len(ids), "max_abs_diff": diff, "tolerance": tolerance,
            "logit_scale": float(theirs.abs().max())}


def convert_upload(info: dict, target: str | os.PathLike, *, name: str = "", extra: dict | None = None,
                   progress=None) -> dict:
    """Load ``info``'s weights (``inspect_upload``), convert them to our ``Decoder``, check the
    logits on the probe text and write the copy to ``target`` all at once. Returns its
    ``engine.json`` metadata (``config``, ``check``, ``chat``, ``parameters``, ...).
    ``progress(fraction, what)`` hears each phase."""
    from safetensors.torch import save_model

    from .mappings import from_transformers

    say = progress or (lambda fraction, what: None)
    t0 = time.monotonic()
    say(0.1, "loading the weights through transformers")
    hf_model, hf_tokenizer = _load_transformers(info)
    say(0.5, "converting to our decoder")
    try:
        model = from_transformers(hf_model).float()
    except (ValueError, RuntimeError) as exc:
        raise UploadError(f"the model cannot be converted: {exc}") from None
    say(0.7, "comparing logits on the probe text")
    check = _probe(model, hf_model, hf_tokenizer)
    del hf_model
    check["seconds"] = round(time.monotonic() - t0, 2)
    chat = bool(getattr(hf_tokenizer, "chat_template", None))
    meta = {"format": IMPORT_FORMAT, "name": name, "model_type": info["model_type"],
            "config": model.config.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
            "source": {"format": info["format"], **(extra or {})}, "check": check, "chat": chat,
            "probe": PROBE_TEXT}

    def fill(tmp):
        save_model(model, str(tmp / WEIGHTS_FILE))
        hf_tokenizer.save_pretrained(str(tmp))
        if not (tmp / "tokenizer.json").is_file():
            raise UploadError("the tokenizer could not be saved as tokenizer.json")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")

    say(0.85, "saving our copy")
    write_copy(Path(target), fill)
    say(1.0, "done")
    return meta


# ---------------------------------------------------------------------------- loading a copy

MAX_LOADED = 2  # imported models a process keeps loaded (least recently used goes first)
_LOADED: OrderedDict[str, tuple] = OrderedDict()
_LOCK = threading.Lock()


def read_meta(directory: str | os.PathLike) -> dict:
    """A copy's ``engine.json``; ``ValueError`` when the directory holds no whole copy."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError(f"no imported model in {directory.name}") from None
    if meta.get("format") != IMPORT_FORMAT or not (directory / WEIGHTS_FILE).is_file():
        raise ValueError(f"{directory.name} holds no whole imported model")
    return meta


def imported_config(directory: str | os.PathLike) -> ModelConfig:
    return ModelConfig.from_dict(read_meta(directory)["config"])


def imported_tokenizer(directory: str | os.PathLike):
    from .pretrained import ChatTokenizer

    read_meta(directory)
    return ChatTokenizer(directory)


def load_imported(directory: str | os.PathLike, *, reuse: bool = True):
    """(our ``Decoder`` in eval mode, its ``ChatTokenizer``) from a copy ``convert_upload`` wrote;
    with ``reuse`` the process keeps the last ``MAX_LOADED`` of them."""
    from .pretrained import _read_copy

    key = str(Path(directory).resolve())
    with _LOCK:
        if reuse and key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
        loaded = _read_copy(Path(directory), read_meta(directory))
        if reuse:
            _LOADED[key] = loaded
            while len(_LOADED) > MAX_LOADED:
                _LOADED.popitem(last=False)
        return loaded
