"""A new attention kind is one class plus one registry entry: a throwaway kind registered inside
the test (and removed after) is offered by the composer, analysed, drawn in the structure view,
plotted with its label and colour token, and trains, with no other edit anywhere."""
import dataclasses
import json

import pytest
import torch

import engine
from engine.nn.attention import MaskedAttention, SlidingAttention
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db(transaction=True)  # run_job's heartbeat thread reads the job


class SinkAttention(MaskedAttention):
    """StreamingLLM's pattern (Xiao et al. 2023): the last ``window`` positions plus the first,
    the attention sink. Reads ``window`` as sliding attention does, but its cache is unbounded
    (the sink must stay)."""

    help = "a window plus the first token"
    color = "pink"
    fields = ("window",)

    def __init__(self, config, *, causal=True):
        super().__init__(config, causal=causal)
        self.window = config.window
        self.params = (config.window,)

    def allowed(self, q_pos, k_pos):
        return (k_pos <= q_pos) & ((q_pos - k_pos < self.window) | (k_pos == 0))

    @classmethod
    def describe(cls, config):
        return f"window {config.window:,} + sink"

    @staticmethod
    def mean_keys(config, t):  # the window's keys, plus the sink for every query past the window
        return SlidingAttention.mean_keys(config, t) + max(0, t - config.window) / t


def post_json(client, url, payload):
    return client.post(url, data=json.dumps(payload), content_type="application/json")


def test_a_kind_registered_at_run_time_is_found_everywhere(alice_client, alice, tiny_spec):
    cfg = engine.ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50, window=4)
    # the app's caches warmed before the kind exists: they must not hide it afterwards
    assert post_json(alice_client, "/api/v1/analyze", {"model": cfg.to_dict()}).status_code == 200
    assert not training_jobs.field_applies("model.window", {"model.attention": "full"})

    engine.register_attention("sink", SinkAttention)
    try:
        # the form: offered, described in the help, and its window field shown for it
        specs = {s["name"]: s for s in engine.field_specs()}
        assert "sink" in specs["model.attention"]["choices"]
        assert "a window plus the first token" in specs["model.attention"]["help"]
        assert specs["model.window"]["show_if"] == {"model.attention": ["sliding", "local_global", "sink"]}
        assert "sink" in specs["model.attn_impl"]["show_if"]["model.attention"]  # it has softmax scores
        assert "sink" not in specs["model.feature_map"]["show_if"]["model.attention"]

        # analyze(): its keys per query (a closed form the mask confirms) priced, its cache unbounded
        cfg = dataclasses.replace(cfg, attention="sink")
        mask = SinkAttention(cfg).mask(0, 16, 0, 16, torch.device("cpu"))
        assert SinkAttention.mean_keys(cfg, 16) == pytest.approx(mask.sum().item() / 16)
        report = engine.analyze(cfg, batch_size=1)
        assert report["flops"]["attention_per_token_layer"] == pytest.approx(4 * 32 * SinkAttention.mean_keys(cfg, 16))
        assert report["settings"]["kv_cache_tokens"] == 16

        # the structure view: its own mask, label and colour token
        mask_view = engine.structure(cfg)["mask"]
        assert mask_view["attention"] == "sink" and mask_view["label"] == "sink (window 4 + sink)"
        assert mask_view["heads"] == [mask[0].int().tolist()] and mask_view["color"] == "pink"

        # the composer's options API: the registry's choices, the form's fields, the kind's colour token
        options = alice_client.get("/api/v1/options").json()
        assert "sink" in options["choices"]["attention"]
        assert "sink" in next(f for f in options["fields"] if f["name"] == "model.attention")["choices"]
        assert {"name": "sink", "color": "pink", "help": "a window plus the first token", "has_scores": True,
                "fields": ["window"]} in options["attention_kinds"]
        assert 'value="sink"' in alice_client.get("/compose/").content.decode()

        # the analysis API: the composer's report panel, its curves and structure
        body = post_json(alice_client, "/api/v1/analyze", {"model": cfg.to_dict()}).json()
        chosen = body["curves"]["series"][0]
        assert chosen["attention"] == "sink" and chosen["chosen"]
        assert chosen["label"] == "sink (window 4 + sink)" and chosen["color"] == "pink"
        assert body["structure"]["mask"]["attention"] == "sink" and body["config_applies"]["window"]
        assert [s["attention"] for s in body["curves"]["series"]] == ["sink", "full", "sliding", "local_global",
                                                                     "dilated", "block_sparse", "linear"]
        full = post_json(alice_client, "/api/v1/analyze", {"model": {**cfg.to_dict(), "attention": "full"}}).json()
        assert "sink" in [s["attention"] for s in full["curves"]["series"]]  # not the report cached before
        assert {"name": "sink", "color": "pink"}.items() <= next(
            k for k in body["options"]["attention_kinds"] if k["name"] == "sink").items()

        # a 5-step training run through the app's job path, with the kind's window kept in its config
        spec = {**tiny_spec, "model": {**tiny_spec["model"], "attention": "sink", "window": 3},
                "train": {**tiny_spec["train"], "steps": 5, "eval_interval": 5, "log_interval": 1}}
        resp = post_json(alice_client, "/api/v1/jobs", {"name": "sink", **spec})
        assert resp.status_code == 201, resp.content
        job = Job.objects.get(pk=resp.json()["id"])
        assert training_jobs.run_job(job.pk, "test-worker") == "succeeded"
        steps = [e.payload for e in job.events.filter(kind="step").order_by("seq")]
        assert [s["step"] for s in steps] == [1, 2, 3, 4, 5] and all(s["loss"] > 0 for s in steps)
        assert training_jobs.relevant_config(job.spec)["model"]["window"] == 3
    finally:
        engine.unregister_attention("sink")

    # gone again: not offered, and refused by name
    assert "sink" not in engine.choices()["attention"]
    assert "sink" not in alice_client.get("/api/v1/options").json()["choices"]["attention"]
    with pytest.raises(engine.ConfigError, match="sink"):
        engine.ModelConfig(attention="sink").validate()


def test_register_refuses_what_is_not_a_kind():
    with pytest.raises(ValueError, match="already registered"):
        engine.register_attention("sliding", SinkAttention)
    with pytest.raises(TypeError, match="AttentionKind"):
        engine.register_attention("plain", object)
    with pytest.raises(ValueError, match="built in"):
        engine.unregister_attention("full")
    assert list(engine.ATTENTIONS) == ["full", "sliding", "local_global", "dilated", "block_sparse", "linear"]
