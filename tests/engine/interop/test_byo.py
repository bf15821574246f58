"""engine.interop.byo: an uploaded model checked and converted without Django. Each mapped decoder
family's tiny random-weight model converts with our logits equal to transformers'; the refusals
say why before any weight is read (the format, the family, the zip's members); the copy reads
back as a Decoder whose logits equal the converted model's."""
import os
import zipfile

import pytest
import torch

from engine.interop import byo
from tests.engine.interop.byo_fixtures import tiny_model_dir, zip_dir


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("llama") / "m", "llama")


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "gpt2"])
def test_each_family_converts_with_transformers_logits(tmp_path, model_type):
    z = zip_dir(tiny_model_dir(tmp_path / "m", model_type, chat=model_type == "qwen2"), tmp_path / "m.zip")
    info = byo.inspect_upload(z, tmp_path / "stage", max_unpacked_bytes=10**8)
    assert info["format"] == "transformers" and info["model_type"] == model_type
    meta = byo.convert_upload(info, tmp_path / "copy", name="m")
    check = meta["check"]
    assert check["tokens"] > 10 and check["max_abs_diff"] <= check["tolerance"]
    assert meta["chat"] is (model_type == "qwen2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "m", "m.zip", "stage"]  # no .partial- left

    model, tok = byo.load_imported(tmp_path / "copy", reuse=False)
    assert (tok.chat_template is not None) is (model_type == "qwen2")
    ids = torch.tensor([tok.encode("hello model")])
    again, _ = byo.load_imported(tmp_path / "copy", reuse=False)
    with torch.no_grad():
        assert torch.equal(model(ids)[0], again(ids)[0])
    assert byo.imported_config(tmp_path / "copy").n_layer == 2


def test_a_file_is_sniffed_by_its_first_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"hello")
    (tmp_path / "e").write_bytes(b"")
    with pytest.raises(byo.UploadError, match="neither a GGUF file"):
        byo.sniff(tmp_path / "a")
    with pytest.raises(byo.UploadError, match="empty"):
        byo.sniff(tmp_path / "e")


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("name,reason", [("../x.py", "outside the archive"), ("a/../../x.py", "outside the archive"),
                                         ("/etc/x", "outside the archive"), ("C:/x", "outside the archive"),
                                         ("m/model.pt", "pickled weights")])
def test_zip_members_outside_the_directory_or_pickled_are_refused(tmp_path, llama_dir, name, reason):
    members = [(f.name, f.read_bytes()) for f in llama_dir.iterdir()] + [(name, b"x")]
    z = _zip(tmp_path / "z.zip", members)
    with pytest.raises(byo.UploadError, match=reason):
        byo.inspect_upload(z, tmp_path / "stage", max_unpacked_bytes=10**8)
    assert not (tmp_path / "stage").exists() and not (tmp_path.parent / "x.py").exists()


def test_a_symbolic_link_in_the_zip_is_refused(tmp_path, llama_dir):
    z = tmp_path / "z.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in llama_dir.iterdir():
            zf.write(f, f.name)
        link = zipfile.ZipInfo("evil")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(byo.UploadError, match="symbolic link"):
        byo.inspect_upload(z, tmp_path / "stage", max_unpacked_bytes=10**8)


def test_a_zip_bomb_is_refused_before_unpacking(tmp_path, llama_dir):
    z = zip_dir(llama_dir, tmp_path / "z.zip")
    size = sum(f.stat().st_size for f in llama_dir.iterdir())
    with pytest.raises(byo.UploadError, match="unpacks to more than"):
        byo.inspect_upload(z, tmp_path / "stage", max_unpacked_bytes=size // 2)
    assert not (tmp_path / "stage").exists()


def test_a_directory_inside_the_zip_is_found(tmp_path, llama_dir):
    z = zip_dir(llama_dir, tmp_path / "z.zip", prefix="my-model/")
    info = byo.inspect_upload(z, tmp_path / "stage", max_unpacked_bytes=10**8)
    assert info["source"].name == "my-model" and info["config"].n_layer == 2


def test_unsupported_families_and_bounds(tmp_path, llama_dir):
    import json

    for cfg, reason in [({"model_type": "bert"}, "'bert' \\(an encoder\\) is not supported"),
                        ({"model_type": "gemma2"}, "'gemma2' is not supported"),
                        ({"no": "type"}, "None is not supported"),
                        ({**json.loads((llama_dir / "config.json").read_text()), "hidden_size": 0},
                         "positive integer")]:
        members = [(f.name, f.read_bytes()) for f in llama_dir.iterdir() if f.name != "config.json"]
        z = _zip(tmp_path / "z.zip", members + [("config.json", json.dumps(cfg))])
        with pytest.raises(byo.UploadError, match=reason):
            byo.inspect_upload(z, tmp_path / os.urandom(4).hex(), max_unpacked_bytes=10**8)


def test_a_tensor_missing_from_the_weights_is_refused(tmp_path, llama_dir):
    """transformers would initialise a missing tensor at random (and the logits would agree): refused."""
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    d.mkdir()
    for f in llama_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    sd = load_file(d / "model.safetensors")
    del sd["model.layers.1.mlp.down_proj.weight"]
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    info = byo.inspect_upload(zip_dir(d, tmp_path / "z.zip"), tmp_path / "stage", max_unpacked_bytes=10**8)
    with pytest.raises(byo.UploadError, match="missing \\['model.layers.1.mlp.down_proj.weight'\\]"):
        byo.convert_upload(info, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_logits_that_differ_from_transformers_are_refused(tmp_path, llama_dir, monkeypatch):
    """The check compares two different models: a conversion that got one weight wrong is caught."""
    from engine.interop import mappings

    convert = mappings.from_transformers

    def slightly_wrong(hf_model):
        model = convert(hf_model)
        with torch.no_grad():
            model.h[1].mlp.down_proj.weight.mul_(1.5)
        return model

    monkeypatch.setattr(mappings, "from_transformers", slightly_wrong)
    info = byo.inspect_upload(zip_dir(llama_dir, tmp_path / "z.zip"), tmp_path / "stage", max_unpacked_bytes=10**8)
    with pytest.raises(byo.UploadError, match="logits differ from transformers' by up to"):
        byo.convert_upload(info, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
