"""engine.serving.engine: the engine's greedy tokens are ``generate``'s, token for token, whether a
request runs alone or among others of other lengths arriving at other steps, with prompts read in
chunks and across preemptions; seeded sampling ignores batch-mates; requests finish, abort and
give their blocks back; the static policy admits nothing while its batch runs.

The models are small and random, their weights drawn wider than the initialisation's (std 0.3)
so that the greedy continuation depends on the context instead of repeating one token."""

import pytest
import torch

from engine import ModelConfig, build_model
from engine.serving import SamplingParams, ServingEngine

VOCAB = 50
SMALL = dict(n_layer=2, n_head=4, n_embd=32, block_size=96, vocab_size=VOCAB, bias=False)
MODELS = {
    "rope-gqa": dict(SMALL, position="rope", n_kv_head=2, norm="rmsnorm", ffn="swiglu"),
    "learned": dict(SMALL, position="learned", norm="layernorm", ffn="gelu", bias=True, tie_embeddings=False),
    "none-mqa-qkv-bias": dict(SMALL, position="none", n_kv_head=1, qkv_bias=True, norm="rmsnorm", ffn="swiglu"),
    "sinusoidal": dict(SMALL, position="sinusoidal", norm="rmsnorm", ffn="gelu"),
}
GREEDY = SamplingParams(max_tokens=12, temperature=0)


def small_model(kind: str = "rope-gqa"):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**MODELS[kind])).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return small_model(request.param)


@pytest.fixture(scope="module")
def rope_model():
    return small_model("rope-gqa")


def prompts(*lengths: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def reference(model, prompt: list[int], n: int) -> list[int]:
    return model.generate(torch.tensor([prompt]), n, temperature=0)[0, len(prompt):].tolist()


def run(engine: ServingEngine, arrivals: dict[int, list[tuple]], on_step=None) -> dict[str, list]:
    """Step ``engine`` until idle, adding ``arrivals[s]`` ((id, prompt, params) ...) before step s;
    the StepOutputs per request."""
    out, s = {}, 0
    while engine.has_work() or any(k >= s for k in arrivals):
        for rid, prompt, params in arrivals.get(s, []):
            engine.add(rid, prompt, params)
            out[rid] = []
        for o in engine.step():
            out[o.request_id].append(o)
        if on_step is not None:
            on_step(engine)
        s += 1
    return out


def tokens(outs) -> list[int]:
    return [o.token for o in outs]


def test_one_request_alone_equals_generate(model):
    (prompt,) = prompts(9)
    out = run(ServingEngine(model, block_size=4, max_batch=4), {0: [("a", prompt, GREEDY)]})
    assert tokens(out["a"]) == reference(model, prompt, GREEDY.max_tokens)


def test_staggered_ragged_batch_with_chunked_prefill_equals_generate(model):
    """Five prompts of 1 to 40 tokens arriving over four steps, prompts read 8 tokens a step: each
    request's tokens are those it gets alone from generate."""
    ps = prompts(3, 40, 7, 1, 21)
    arrivals = {0: [("r0", ps[0], GREEDY), ("r1", ps[1], GREEDY)], 2: [("r2", ps[2], GREEDY)],
                3: [("r3", ps[3], GREEDY), ("r4", ps[4], GREEDY)]}
    engine = ServingEngine(model, block_size=4, max_batch=8, prefill_chunk=8)
    out = run(engine, arrivals)
    for i, p in enumerate(ps):
        assert tokens(out[f"r{i}"]) == reference(model, p, GREEDY.max_tokens), f"request r{i}"
    assert engine.stats()["preemptions"] == 0 and engine.stats()["blocks_used"] == 0


def test_uninitialised_pool_memory_never_reaches_the_output(rope_model):
    """The pool is allocated empty; were its memory NaN, the masked padding of ragged decode rows
    must still contribute nothing."""
    ps = prompts(3, 13, 6)
    engine = ServingEngine(rope_model, block_size=4, max_batch=4, prefill_chunk=8)
    engine.cache.k[:, : engine.cache.num_blocks] = float("nan")
    engine.cache.v[:, : engine.cache.num_blocks] = float("nan")
    out = run(engine, {0: [(f"r{i}", p, GREEDY) for i, p in enumerate(ps)]})
    for i, p in enumerate(ps):
        assert tokens(out[f"r{i}"]) == reference(rope_model, p, GREEDY.max_tokens), f"request r{i}"


def test_preempted_requests_resume_with_the_same_tokens(model):
    """A pool too small for all four requests to grow: the newest are preempted, read again from
    prompt + produced tokens, and still end as generate does."""
    ps = prompts(10, 14, 6, 12, seed=2)
    params = SamplingParams(max_tokens=20, temperature=0)
    engine = ServingEngine(model, block_size=4, num_blocks=16, max_batch=4, prefill_chunk=16)
    out = run(engine, {0: [(f"r{i}", p, params) for i, p in enumerate(ps)]})
    assert engine.stats()["preemptions"] > 0
    for i, p in enumerate(ps):
        assert tokens(out[f"r{i}"]) == reference(model, p, params.max_tokens), f"request r{i}"
    assert engine.stats()["blocks_used"] == 0


def test_decodes_get_a_token_every_step_while_a_long_prompt_is_read_in_chunks(rope_model):
    (short, long) = prompts(4, 40)
    engine = ServingEngine(rope_model, block_size=4, prefill_chunk=8)
    engine.add("short", short, SamplingParams(max_tokens=20, temperature=0))
    engine.step()
    engine.add("long", long, GREEDY)
    steps = [[o.request_id for o in engine.step()] for _ in range(5)]
    # 40 prompt tokens, 8 a step: the long request's first token comes with its fifth chunk
    assert steps == [["short"]] * 4 + [["short", "long"]]


def test_seeded_sampling_ignores_batch_mates_and_matches_generate(rope_model):
    (prompt,) = prompts(6, seed=3)
    params = SamplingParams(max_tokens=15, temperature=0.9, top_k=20, top_p=0.95, seed=1234)
    alone = run(ServingEngine(rope_model, block_size=4), {0: [("s", prompt, params)]})
    mates = [("m0", p, SamplingParams(max_tokens=10, temperature=1.0)) for p in prompts(11, 2, seed=4)]
    crowded = run(ServingEngine(rope_model, block_size=4, prefill_chunk=4),
                  {0: mates[:1], 1: [("s", prompt, params)], 2: [("m1", *mates[1][1:])]})
    assert tokens(alone["s"]) == tokens(crowded["s"])
    generator = torch.Generator().manual_seed(1234)
    expected = rope_model.generate(torch.tensor([prompt]), 15, temperature=0.9, top_k=20, top_p=0.95,
                                   generator=generator)[0, 6:].tolist()
    assert tokens(alone["s"]) == expected
    unseeded = [tokens(run(ServingEngine(rope_model), {0: [("u", prompt, SamplingParams(max_tokens=15))]})["u"])
                for _ in range(2)]
    assert len({tuple(t) for t in unseeded + [tokens(alone["s"])]}) > 1  # the seed is what made them equal


def test_a_stop_token_is_reported_then_finishes_with_stop(rope_model):
    (prompt,) = prompts(5)
    expected = reference(rope_model, prompt, 12)
    stop = expected[3]
    first = expected.index(stop)  # the earliest place it appears
    params = SamplingParams(max_tokens=12, temperature=0, stop_token_ids=(VOCAB + 7, stop))
    out = run(ServingEngine(rope_model, block_size=4), {0: [("a", prompt, params)]})["a"]
    assert tokens(out) == expected[: first + 1]
    assert [o.finished for o in out] == [False] * first + [True]
    assert out[-1].finish_reason == "stop" and all(o.finish_reason is None for o in out[:-1])


def test_max_tokens_finishes_with_length(rope_model):
    (prompt,) = prompts(5)
    out = run(ServingEngine(rope_model), {0: [("a", prompt, SamplingParams(max_tokens=3, temperature=0))]})["a"]
    assert len(out) == 3 and out[-1].finished and out[-1].finish_reason == "length"
    assert [o.finished for o in out[:-1]] == [False, False]
    # the whole context: a prompt and max_tokens that end exactly at block_size
    (full,) = prompts(rope_model.config.block_size - 4)
    out = run(ServingEngine(rope_model, block_size=16), {0: [("f", full, SamplingParams(max_tokens=4, temperature=0))]})
    assert tokens(out["f"]) == reference(rope_model, full, 4) and out["f"][-1].finish_reason == "length"


def test_abort_drops_running_and_waiting_requests_and_frees_their_blocks(rope_model):
    engine = ServingEngine(rope_model, block_size=4, max_batch=2)
    ps = prompts(9, 9, 9)
    for i, p in enumerate(ps):
        engine.add(f"r{i}", p, SamplingParams(max_tokens=30, temperature=0))
    for _ in range(3):
        engine.step()
    assert engine.stats()["running"] == 2 and engine.stats()["waiting"] == 1
    used = engine.stats()["blocks_used"]
    held = len(engine.cache.tables["r0"])
    engine.abort("r0")  # running
    engine.abort("r2")  # waiting
    engine.abort("nobody")
    stats = engine.stats()
    assert stats["blocks_used"] == used - held and stats["running"] == 1 and stats["waiting"] == 0
    rest = []
    while engine.has_work():
        rest += engine.step()
    assert {o.request_id for o in rest} == {"r1"}
    assert engine.stats()["blocks_used"] == 0 and engine.stats()["blocks_free"] == engine.stats()["blocks_total"]
    engine.add("r0", ps[0], GREEDY)  # a finished or aborted id may be used again
    assert engine.has_work()


def test_paged_waste_is_at_most_the_last_block(rope_model):
    """After every step each sequence holds ceil(cached / block_size) blocks: reserved over used
    stays within 1 + block_size · sequences / tokens."""
    engine = ServingEngine(rope_model, block_size=8)
    ratios = []

    def check(e):
        s = e.stats()
        if s["kv_bytes_used"]:
            per_token = e.cache.bytes_per_token
            tokens_cached = s["kv_bytes_used"] // per_token
            expected = sum(-(-n // 8) for n in e.cache.lengths.values()) * e.cache.bytes_per_block
            assert s["kv_bytes_reserved"] == expected
            ratios.append(s["kv_bytes_reserved"] / s["kv_bytes_used"])
            assert ratios[-1] <= 1 + 8 * s["running"] / tokens_cached

    (one,) = prompts(3)
    run(engine, {0: [("a", one, SamplingParams(max_tokens=40, temperature=0))]}, check)
    assert max(ratios) <= 1 + 8 / 3 and min(ratios) == 1.0  # a full last block wastes nothing
    ratios.clear()
    run(engine, {0: [(f"r{i}", p, GREEDY) for i, p in enumerate(prompts(5, 17, 30))]}, check)
    assert ratios


def test_static_policy_admits_nothing_while_a_batch_runs(rope_model):
    ps = prompts(4, 6, 5)
    long = SamplingParams(max_tokens=10, temperature=0)
    static = ServingEngine(rope_model, policy="static")
    continuous = ServingEngine(rope_model, policy="continuous")
    seen = {}
    for name, engine in [("static", static), ("continuous", continuous)]:
        engine.add("a", ps[0], long)
        engine.add("b", ps[1], SamplingParams(max_tokens=3, temperature=0))
        engine.step()
        engine.add("c", ps[2], GREEDY)
        seen[name] = [sorted(o.request_id for o in engine.step()) for _ in range(10)]
    # static: c waits until a (the batch's longest) has finished; continuous: c joins at once
    assert seen["static"] == [["a", "b"], ["a", "b"]] + [["a"]] * 7 + [["c"]]
    assert seen["continuous"][0] == ["a", "b", "c"]
    assert static.stats()["running"] == 1 and static.stats()["waiting"] == 0


def test_the_policy_can_be_switched_between_steps(rope_model):
    ps = prompts(4, 6)
    engine = ServingEngine(rope_model, policy="continuous")
    engine.set_policy("static")
    engine.add("a", ps[0], SamplingParams(max_tokens=4, temperature=0))
    engine.step()
    engine.add("b", ps[1], GREEDY)
    assert [o.request_id for o in engine.step()] == ["a"]  # static now: b waits for the batch
    engine.set_policy("continuous")
    assert sorted(o.request_id for o in engine.step()) == ["a", "b"]  # continuous again: b joins
    with pytest.raises(ValueError, match="unknown policy"):
        engine.set_policy("greedy")
    assert engine.policy == "continuous"


def test_logprobs_are_the_forward_log_softmax(rope_model):
    (prompt,) = prompts(7)
    params = SamplingParams(max_tokens=6, temperature=0.8, seed=5, logprobs=3)
    mate = ("m", prompts(13, seed=9)[0], SamplingParams(max_tokens=6, temperature=0))
    out = run(ServingEngine(rope_model, block_size=4), {0: [("a", prompt, params), mate]})["a"]
    seq = torch.tensor([prompt + tokens(out)])
    with torch.no_grad():
        logits, _ = rope_model(seq)
    logp = torch.log_softmax(logits[0, len(prompt) - 1 : -1].float(), dim=-1)  # (6, vocab): before each new token
    for i, o in enumerate(out):
        assert o.logprob == pytest.approx(logp[i, o.token].item(), abs=1e-4)
        best = torch.topk(logp[i], 3)
        assert [t for t, _ in o.top] == best.indices.tolist()
        assert [lp for _, lp in o.top] == pytest.approx(best.values.tolist(), abs=1e-4)
    plain = run(ServingEngine(rope_model), {0: [("p", prompt, GREEDY)]})["p"]
    assert all(o.top == [] for o in plain) and all(o.logprob <= 0 for o in plain)


def test_requests_that_cannot_be_served_are_refused_with_the_numbers(rope_model):
    engine = ServingEngine(rope_model, block_size=4, num_blocks=5)
    with pytest.raises(ValueError, match=r"prompt \(90 tokens\) and max_tokens \(7\) exceed .* context of 96"):
        engine.add("a", [1] * 90, SamplingParams(max_tokens=7))
    with pytest.raises(ValueError, match="empty"):
        engine.add("a", [], GREEDY)
    with pytest.raises(ValueError, match=r"needs 6 KV blocks .* the pool has 5"):
        engine.add("a", [1] * 12, SamplingParams(max_tokens=12))
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        engine.add("a", [1, VOCAB], GREEDY)
    engine.add("a", [1, 2], GREEDY)
    with pytest.raises(ValueError, match="'a' is already in use"):
        engine.add("a", [3], GREEDY)
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="unknown policy 'fifo'; choose from"):
        ServingEngine(rope_model, policy="fifo")


@pytest.mark.parametrize("change, named", [
    ({"qk_norm": True}, "qk_norm"),
    ({"position": "alibi"}, "position 'alibi'"),
    ({"norm_placement": "post"}, "norm_placement 'post'"),
    ({"attention": "sliding", "window": 4}, "attention 'sliding'"),
    ({"n_expert": 2, "top_k": 1}, "n_expert 2"),
    ({"attn_softcap": 5.0}, "soft-caps"),
])
def test_models_it_cannot_serve_are_refused_by_name(change, named):
    model = build_model(ModelConfig(**{**MODELS["rope-gqa"], **change}))
    with pytest.raises(ValueError, match=f"cannot serve this model: .*{named}"):
        ServingEngine(model)


def test_pool_size_from_the_defaults_or_kv_bytes(rope_model):
    engine = ServingEngine(rope_model, block_size=16, max_batch=3)
    assert engine.stats()["blocks_total"] == 3 * 6  # 3 sequences of the full 96-token context
    per_block = engine.cache.bytes_per_block
    assert ServingEngine(rope_model, block_size=16, kv_bytes=10 * per_block + 1).stats()["blocks_total"] == 10
    with pytest.raises(ValueError, match="holds no block"):
        ServingEngine(rope_model, kv_bytes=per_block - 1)
