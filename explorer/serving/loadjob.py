"""The serving load test as a job: a bounded Poisson workload (``explorer.serving.loadtest``)
sent to the OpenAI-compatible endpoint at a few arrival rates, under continuous and static
batching in turn, each point's throughput and latencies an event the job page charts.

The worker reaches the endpoint as a client would (``SERVING_ENDPOINT_URL``), with an API token
made for the job's owner and team and revoked when the job ends. Before each policy's points it
switches the serving process's batching policy (``bus.control``) and waits until the process
reports it and its batch is empty, so each point measures one policy; the policy the process had
is put back at the end, whatever the outcome. The serving process is shared: a load test slows
everyone's requests while it runs, as the page says.
"""
import logging
import time

from django.conf import settings
from django.utils import timezone

from engine.config import events
from explorer.jobs import lifecycle
from explorer.jobs.services import SpecError
from explorer.serving import bus, live, loadtest

log = logging.getLogger(__name__)

POLICIES = ("continuous", "static")
MAX_RATES = 6
RATE_RANGE = (0.05, 20.0)
REQUESTS_RANGE = (2, 100)
MAX_TOTAL_REQUESTS = 600
MIN_TOKENS = 8
MAX_TOKENS_RANGE = (MIN_TOKENS, 256)
DRAIN_TIMEOUT_S = 180
DEFAULTS = {"rates": [0.25, 0.5, 1.0], "requests": 12, "policies": list(POLICIES), "max_tokens": 128, "seed": 0}


def validate(user, payload):
    """The job's spec from the form or API ``payload``; ``SpecError`` by field."""
    errors = {}
    models = {m["model"]: m for m in live.served_models(user)}
    model = payload.get("model")
    if not models:
        errors["model"] = "no model is being served now: start one with `python manage.py serve <model>`"
    elif model not in models:
        errors["model"] = f"{model!r} is not being served; choose from {', '.join(sorted(models))}"
    rates = payload.get("rates", DEFAULTS["rates"])
    if isinstance(rates, str):
        try:
            rates = [float(r) for r in rates.replace(",", " ").split()]
        except ValueError:
            rates = None
    if (not isinstance(rates, list) or not 1 <= len(rates) <= MAX_RATES
            or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and RATE_RANGE[0] <= r <= RATE_RANGE[1]
                       for r in rates)):
        errors["rates"] = (f"1 to {MAX_RATES} arrival rates, each between {RATE_RANGE[0]} and {RATE_RANGE[1]} "
                           "requests per second")
    else:
        rates = sorted({float(r) for r in rates})
    requests = payload.get("requests", DEFAULTS["requests"])
    if not isinstance(requests, int) or isinstance(requests, bool) or not REQUESTS_RANGE[0] <= requests <= REQUESTS_RANGE[1]:
        errors["requests"] = f"requests per point: a whole number from {REQUESTS_RANGE[0]} to {REQUESTS_RANGE[1]}"
    policies = payload.get("policies", DEFAULTS["policies"])
    if not isinstance(policies, list) or not policies or not set(policies) <= set(POLICIES):
        errors["policies"] = f"one or both of {', '.join(POLICIES)}"
    max_tokens = payload.get("max_tokens", DEFAULTS["max_tokens"])
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) \
            or not MAX_TOKENS_RANGE[0] <= max_tokens <= MAX_TOKENS_RANGE[1]:
        errors["max_tokens"] = (f"the longest output drawn: {MAX_TOKENS_RANGE[0]} to {MAX_TOKENS_RANGE[1]} tokens "
                                f"(each request's length is drawn between {MIN_TOKENS} and it)")
    seed = payload.get("seed", DEFAULTS["seed"])
    if not isinstance(seed, int) or isinstance(seed, bool):
        errors["seed"] = "a whole number"
    if not errors and len(rates) * len(policies) * requests > MAX_TOTAL_REQUESTS:
        errors["requests"] = (f"{len(rates)} rates × {len(policies)} policies × {requests} requests is more than "
                              f"{MAX_TOTAL_REQUESTS} requests in all")
    if errors:
        raise SpecError(errors)
    return {"model": model, "rates": rates, "requests": requests, "policies": [p for p in POLICIES if p in policies],
            "max_tokens": max_tokens, "seed": seed}


def points(spec):
    """(policy, rate) in the order the job measures them."""
    return [(policy, rate) for policy in spec["policies"] for rate in spec["rates"]]


def _figures(redis, model):
    raw = redis.get(bus.alive(model))
    return bus.unpack(raw) if raw else None


def set_policy(redis, model, policy, should_stop):
    """Ask the serving process for ``policy`` and wait until it has it and its batch is empty."""
    redis.rpush(bus.control(model), bus.pack({"policy": policy}))
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        figures = _figures(redis, model)
        if figures is None:
            raise RuntimeError(f"the serving process of {model} stopped")
        if figures["policy"] == policy and figures["running"] == 0 and figures["waiting"] == 0:
            return
        if should_stop():
            raise lifecycle.JobCancelled()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the serving process of {model} did not switch to {policy} batching with an empty "
                               f"batch within {DRAIN_TIMEOUT_S} s (it runs {figures['running']} sequences)")
        time.sleep(0.25)


def _explain(exc):
    if isinstance(exc, RuntimeError):
        return str(exc)
    return None


def run_job(job_id, worker_name):
    """Run a queued load test (``lifecycle.job_run``); its final status."""
    from explorer.accounts.models import ApiToken

    with lifecycle.job_run(job_id, worker_name, what="load test", explain=_explain) as run:
        if run is None:
            return None
        recorder, spec = run.recorder, run.job.spec["serving_load"]
        model, todo = spec["model"], points(spec)
        redis = bus.sync_client()
        figures = _figures(redis, model)
        if figures is None:
            raise RuntimeError(f"{model} is no longer being served; start its serving process and submit again")
        original = figures["policy"]
        recorder(events.StartEvent(kind="start", total_steps=len(todo), device="cpu", source={"model": model}))
        token, raw = ApiToken.issue(run.job.owner, f"load test #{job_id}", team=run.job.team)
        started = time.monotonic()
        try:
            for index, (policy, rate) in enumerate(todo):
                if run.should_stop():
                    raise lifecycle.JobCancelled()
                elapsed = time.monotonic() - started
                eta = elapsed / index * (len(todo) - index) if index else None
                recorder(events.ProgressEvent(kind="progress", fraction=round(index / len(todo), 4),
                                              step=round(100 * index / len(todo)), elapsed=round(elapsed, 3),
                                              eta=None if eta is None else round(eta, 3), phase=policy,
                                              detail=f"{policy} batching at {rate:g} requests/s"))
                set_policy(redis, model, policy, run.should_stop)
                workload = loadtest.Workload(rate=rate, requests=spec["requests"], min_tokens=MIN_TOKENS,
                                             max_tokens=spec["max_tokens"], seed=spec["seed"])
                summary, _ = loadtest.run(settings.SERVING_ENDPOINT_URL, raw, model, workload, progress=False)
                recorder(events.LoadPointEvent(kind="load_point", policy=policy, rate=rate, index=index,
                                               summary=summary))
        finally:
            ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
            try:
                if _figures(redis, model) is not None:
                    redis.rpush(bus.control(model), bus.pack({"policy": original}))
            except Exception:  # noqa: BLE001 - the process may be gone; a restarted one starts as configured
                log.warning("load test %s: could not put %s back to %s batching", job_id, model, original)
        elapsed = time.monotonic() - started
        recorder(events.ProgressEvent(kind="progress", fraction=1.0, step=100, elapsed=round(elapsed, 3), eta=0.0,
                                      phase="done", detail="done"))
        recorder(events.EndEvent(kind="end", reason="finished", step=len(todo), elapsed=round(elapsed, 3)))
    return run.status
