import json
import math

import pytest

from engine import ModelConfig, analyze, preset
from engine.analysis.hardware import HARDWARE, MAX_BATCH, fit, largest_batch, measure_cpu, train_memory


@pytest.mark.parametrize("key", list(HARDWARE))
def test_catalogue_entries_are_positive(key):
    entry = HARDWARE[key].to_dict()
    assert entry["memory"] > 0 and entry["bandwidth"] > 0
    assert entry["flops"]["fp32"] > 0
    assert all(v > 0 for v in entry["flops"].values())
    json.dumps(entry)  # JSON-ready


@pytest.mark.parametrize("key", list(HARDWARE))
def test_fit_runs_on_every_device(key, tiny_config):
    result = fit(tiny_config, key, seq_len=16, batch_size=2)
    json.dumps(result)
    assert result["train"]["fits"] and result["inference"]["fits"]
    assert result["inference"]["decode_tokens_per_s"] > 0 and result["inference"]["prefill_tokens_per_s"] > 0


def test_cpu_local_is_measured():
    measured = measure_cpu()
    assert measured["flops"]["fp32"] > 0 and measured["bandwidth"] > 0
    assert measure_cpu() is measured  # timed once


def test_cpu_peak_is_measured_once_per_machine_and_only_goes_up(tmp_path, monkeypatch):
    """The peak is the fastest of several matmuls on the training threads, kept in a per-machine
    file keyed by CPU model, thread count and torch version; a later process reads it from there
    (not timing a machine that other workers keep busy), and says so."""
    import torch

    from engine.analysis import hardware

    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(hardware, "_MEASURED", {})
    threads = torch.get_num_threads()
    measured = measure_cpu()
    assert measured["source"] == (f"measured now (fastest of {hardware.CPU_REPEATS} fp32 {hardware.CPU_MATMUL}² "
                                  f"matmuls on {threads} threads)")
    cache = json.loads((tmp_path / "cpu_peak.json").read_text())
    key = f"{hardware.cpu_model()} | {threads} threads | torch {torch.__version__.split('+')[0]}"
    assert cache[key]["fp32"] == measured["flops"]["fp32"]
    monkeypatch.setattr(hardware, "_MEASURED", {})  # a new process
    again = measure_cpu()
    assert again["flops"] == measured["flops"]
    assert again["source"].startswith(f"cached from {tmp_path / 'cpu_peak.json'}")
    assert HARDWARE["cpu-local"].to_dict()["source"] == again["source"]
    hardware._write_peak(tmp_path / "cpu_peak.json", key, {"fp32": 1.0, "bandwidth": 1.0})  # a slower figure
    assert json.loads((tmp_path / "cpu_peak.json").read_text())[key]["fp32"] == measured["flops"]["fp32"]
    raised = hardware.raise_cpu_peak(2 * measured["flops"]["fp32"], "a step ran faster")
    assert raised is again and raised["flops"]["fp32"] == 2 * measured["flops"]["fp32"]
    assert raised["source"] == "raised: a step ran faster"
    assert json.loads((tmp_path / "cpu_peak.json").read_text())[key]["fp32"] == 2 * measured["flops"]["fp32"]


def test_llama_2_7b_inference_fits_an_a100_80gb():
    result = fit(preset("llama-2-7b"), "a100-80gb", seq_len=4096, dtype="bf16")
    assert result["inference"]["fits"]
    assert result["inference"]["verdict"].startswith("fits")


def test_llama_2_7b_training_does_not_fit_an_l4():
    result = fit(preset("llama-2-7b"), "l4", seq_len=4096, dtype="bf16", optimizer="adamw")
    assert not result["train"]["fits"]
    assert result["train"]["verdict"].startswith("does not fit")
    assert result["train"]["largest_batch"] == 0


def test_decode_bound_is_bandwidth_over_bytes_per_token(tiny_config):
    result = fit(tiny_config, "h100-sxm", seq_len=16, batch_size=1, dtype="bf16")
    report = analyze(tiny_config, batch_size=1, seq_len=16, dtype="bf16")
    # bf16: 2 bytes per weight, plus the cache of the 16 tokens read each step
    bytes_per_token = report["params"]["total"] * 2 + report["kv_cache"]
    assert result["inference"]["decode_tokens_per_s"] == pytest.approx(HARDWARE["h100-sxm"].bandwidth / bytes_per_token)


def test_chinchilla_tokens_and_cost(tiny_config):
    result = fit(tiny_config, "a100-80gb", seq_len=16, n_gpus=2, price_per_hour=3.0, mfu=0.5)
    params = result["params"]
    assert result["time"]["train_tokens"] == 20 * params
    flops = analyze(tiny_config, batch_size=1, seq_len=16, dtype="bf16")["flops"]["per_token_train"]
    seconds = 20 * params * flops / (2 * 312e12 * 0.5)
    assert result["time"]["seconds"] == pytest.approx(seconds)
    assert result["time"]["cost"] == pytest.approx(seconds / 3600 * 3.0 * 2)


def test_largest_batch_fits_and_one_more_does_not(tiny_config):
    for memory in [1e6, 1e7, 1e8]:
        b = largest_batch(tiny_config, memory, seq_len=16)
        assert 0 < b < MAX_BATCH
        assert train_memory(tiny_config, batch_size=b, seq_len=16) <= memory
        assert train_memory(tiny_config, batch_size=b + 1, seq_len=16) > memory


def test_largest_batch_is_monotone_in_memory(tiny_config):
    batches = [largest_batch(tiny_config, m, seq_len=16) for m in [0, 1e5, 1e6, 1e7, 1e8, 1e9, 1e15]]
    assert batches == sorted(batches)
    assert batches[0] == 0 and batches[-1] == MAX_BATCH


def test_absurd_sizes_return_quickly():
    huge = ModelConfig.from_dict(preset("llama-2-7b").to_dict() | {"n_layer": 1000, "n_head": 1000,
                                                                    "n_embd": 10**6, "ffn_hidden": 4 * 10**6})
    result = fit(huge, "h200", seq_len=10**9, batch_size=10**6, n_gpus=8)
    assert result["params"] >= 10**15
    assert result["train"]["verdict"].startswith("does not fit")
    assert result["inference"]["verdict"].startswith("does not fit")
    assert result["train"]["largest_batch"] == 0
    assert math.isfinite(result["time"]["seconds"])
    # a windowed pattern at a huge context is counted in closed form (its speed: bench/analyze_speed.py)
    assert fit(preset("mistral-7b"), "h200", seq_len=10**9)["train"]["verdict"].startswith("does not fit")


def test_unknown_device_names_the_choices(tiny_config):
    with pytest.raises(ValueError, match="choose from"):
        fit(tiny_config, "tpu-v9")


SETTINGS = {"n_gpus": 4, "sharding": "zero2", "activation_checkpointing": True, "flash_attention": True,
            "quantization": "int8"}


def test_analyze_reports_fit_with_its_settings(tiny_config):
    report = analyze(tiny_config, batch_size=6, seq_len=16, dtype="bf16", hardware="a100-80gb",
                     price_per_gpu_hour=2.0, **SETTINGS)
    alone = fit(tiny_config, "a100-80gb", batch_size=6, seq_len=16, dtype="bf16", price_per_hour=2.0, **SETTINGS)
    assert report["fit"] == alone
    assert analyze(tiny_config)["fit"] is None


def test_fit_uses_the_per_gpu_memory(tiny_config):
    result = fit(tiny_config, "h100-sxm", batch_size=6, seq_len=16, dtype="bf16", **SETTINGS)
    report = analyze(tiny_config, batch_size=6, seq_len=16, dtype="bf16", **SETTINGS)
    per_gpu = report["memory"]["train_per_gpu"]["total"]
    assert result["train"]["memory_per_gpu"] == per_gpu and result["train"]["memory_needed"] == 4 * per_gpu
    b = result["train"]["largest_batch"]
    training = {k: v for k, v in SETTINGS.items() if k != "quantization"}
    assert train_memory(tiny_config, batch_size=b, seq_len=16, dtype="bf16", **training) <= HARDWARE["h100-sxm"].memory
    assert b == MAX_BATCH  # a tiny model: any batch
    assert fit(preset("llama-2-7b"), "h100-sxm", n_gpus=4, seq_len=4096, dtype="bf16",
               sharding="zero2")["train"]["largest_batch"] == 0  # 7B's states do not fit 4 × 80 GB with ZeRO-2
    assert result["inference"]["weights"] == report["memory"]["inference"]["weights"]
    assert result["inference"]["memory_needed"] == report["memory"]["inference"]["total"]


def test_sharding_lets_a_big_model_train(tiny_config):
    big = preset("llama-2-7b")
    plain = fit(big, "a100-80gb", n_gpus=8, sharding="none", batch_size=8, seq_len=1024)
    sharded = fit(big, "a100-80gb", n_gpus=8, sharding="zero3", batch_size=8, seq_len=1024,
                  activation_checkpointing=True, flash_attention=True)
    assert not plain["train"]["fits"] and sharded["train"]["fits"]
    assert sharded["train"]["largest_batch"] > 8


def test_checkpointing_costs_a_third_more_time(tiny_config):
    plain = fit(tiny_config, "h100-sxm", seq_len=16)["time"]["seconds"]
    ckpt = fit(tiny_config, "h100-sxm", seq_len=16, activation_checkpointing=True)["time"]["seconds"]
    assert ckpt == pytest.approx(plain * 4 / 3)


def test_quantized_weights_decode_faster(tiny_config):
    cfg = preset("llama-2-7b")
    bf16 = fit(cfg, "h100-sxm", seq_len=1024, dtype="bf16")["inference"]
    int4 = fit(cfg, "h100-sxm", seq_len=1024, dtype="bf16", quantization="int4")["inference"]
    assert int4["weights"] < bf16["weights"] / 3
    assert int4["decode_tokens_per_s"] > 2 * bf16["decode_tokens_per_s"]
