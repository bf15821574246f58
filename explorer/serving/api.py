"""The Serving page's endpoints: the live figures of every serving process, and a load test."""
from typing import Any

from ninja import Router, Schema, Status

from explorer.accounts.api import ErrorOut, team_or_400
from explorer.jobs import services, submission
from explorer.jobs.api import JobOut
from explorer.serving import live, loadjob

serving = Router(tags=["serving"])


@serving.get("/serving", summary="Served models, live: batch, KV blocks, queue, tokens/s, TTFT and TPOT, 429s")
def serving_status(request):
    """One entry per model a serving process is up for (its last heartbeat, under a second old)
    that you may use; ``endpoint``: where the OpenAI-compatible API answers; ``loadtest``: the
    load test's defaults and limits."""
    return {"endpoint": request.build_absolute_uri("/v1"), "models": live.served_models(request.user),
            "loadtest": loadtest_options()}


def loadtest_options():
    return {"defaults": loadjob.DEFAULTS, "policies": list(loadjob.POLICIES), "max_rates": loadjob.MAX_RATES,
            "rate_range": list(loadjob.RATE_RANGE), "requests_range": list(loadjob.REQUESTS_RANGE),
            "max_tokens_range": list(loadjob.MAX_TOKENS_RANGE), "min_tokens": loadjob.MIN_TOKENS,
            "max_total_requests": loadjob.MAX_TOTAL_REQUESTS}


class LoadTestIn(Schema):
    name: str = ""
    team: str | None = None
    priority: str = "normal"
    model: str = ""
    rates: Any = loadjob.DEFAULTS["rates"]  # requests/s: a list, or "0.5, 1, 2"
    requests: Any = loadjob.DEFAULTS["requests"]  # per point
    policies: Any = loadjob.DEFAULTS["policies"]
    max_tokens: Any = loadjob.DEFAULTS["max_tokens"]
    seed: Any = loadjob.DEFAULTS["seed"]


@serving.post("/serving/loadtest", response={201: JobOut, 400: ErrorOut, 429: ErrorOut},
              summary="Load-test a served model: Poisson arrivals at each rate, continuous against static batching")
def create_loadtest(request, payload: LoadTestIn):
    """A job that sends ``requests`` streaming completions (output lengths drawn between 8 and
    ``max_tokens``) at each arrival rate in ``rates``, under each batching policy in
    ``policies``; its "load_point" events hold each point's output tokens/s, p50/p99 TTFT, TPOT
    and end-to-end latency and its share of 429s."""
    team = team_or_400(request, payload.team)
    body = payload.dict(exclude={"name", "team", "priority"})
    job = submission.submit(request.user, team, "serving-load", body, name=payload.name, priority=payload.priority)
    return Status(201, services.job_to_dict(job, position=services.queue_positions([job])[job.pk]))
