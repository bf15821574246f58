"""Who runs next: priorities, fair share, quotas, roles, and each queued job's place and start time.

The order lives in the database, not in the broker. A submission sends one Celery message to
the job's route (its queue, or a memory tier of it: ``Job.route``); whichever worker takes a
message runs the *best* queued job of that route at that moment (``run_next``), of any kind
(training, inference, tokenizer training: ``runners``), so a job's priority can change while it
waits and fair share is judged when a worker is free:

1. higher ``priority`` first (high, normal, low);
2. then jobs a maintainer moved to the top (``queue_order`` < 0), latest move first;
3. then the owner with the fewest running jobs (fair share between users);
4. then ``queue_order`` (the submission time);

skipping jobs whose team or owner is at a running-jobs quota (``Team.max_running``,
``Team.max_running_per_user``): those wait, they are not refused. A message that finds nothing
runnable is dropped; when a job ends, and on every reaper tick, ``kick`` sends a message to each
route that has queued jobs but none waiting in the broker, so nothing is stranded.

Submission quotas (``check_submission``) refuse with a message: active (queued + running) jobs per
user, and GPU-hours per day per user and per team.

Roles (``Membership.Role``): members submit and cancel their own jobs and choose low or normal
priority; maintainers cancel, retry, reorder and reprioritise any job of the team; admins also
manage members and quotas.
"""
import datetime
import logging
import statistics
import threading
import time

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Count, IntegerField, Max, OuterRef, Q, Subquery, Sum, Value, When
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce
from django.utils import timezone

from explorer.accounts.teams import is_manager, role_of
from explorer.jobs.models import Job

log = logging.getLogger(__name__)

PRIORITIES = {"low": 0, "normal": 1, "high": 2}
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}
# tokens/s assumed for a queue with no finished job to learn from (a small model on a CPU)
DEFAULT_TOKENS_PER_S = {"cpu": 20_000.0, "gpu": 200_000.0}


class QuotaExceeded(Exception):
    """A submission over a quota; the message names the quota, the usage and what to do."""


class NotAllowed(Exception):
    """The user's role in the job's team does not allow the action; the message says which does."""


def check_can_act(user, job, action="cancel"):
    """Members act on their own jobs; maintainers and admins on any job of the team."""
    if job.owner_id == user.pk or is_manager(user, job.team):
        return
    raise NotAllowed(f"only {job.owner.get_username()} (the owner) or a maintainer of {job.team.name} can "
                     f"{action} this job; you are a {role_of(user, job.team) or 'non-member'}")


def check_priority(user, team, priority):
    """The priority name a user may give a job: high is for maintainers and admins."""
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; choose from {list(PRIORITIES)}")
    if priority == "high" and not is_manager(user, team):
        raise NotAllowed(f"only maintainers and admins of {team.name} can give a job high priority")
    return PRIORITIES[priority]


# ---------------------------------------------------------------------------- quotas at submission
def gpu_hours_since(jobs, since):
    """GPU-hours the ``jobs`` (a queryset) ran since ``since`` (running ones up to now)."""
    now = timezone.now()
    total = 0.0
    for started, finished in jobs.filter(queue="gpu", started_at__isnull=False).filter(
            Q(finished_at__isnull=True) | Q(finished_at__gte=since)).values_list("started_at", "finished_at"):
        total += ((finished or now) - max(started, since)).total_seconds()
    return total / 3600


def check_submission(user, team, queue):
    """Raise ``QuotaExceeded`` when a new job of ``user`` in ``team`` on ``queue`` is over a quota."""
    active = Job.objects.filter(team=team, owner=user, status__in=(Job.Status.QUEUED, Job.Status.RUNNING))
    limit = team.max_active_per_user
    if limit is not None and active.count() >= limit:
        raise QuotaExceeded(f"you have {active.count()} active jobs (queued or running) in {team.name}, its limit per "
                            f"user is {limit}: cancel one or wait for one to finish")
    if queue != "gpu":
        return
    since = timezone.now() - datetime.timedelta(days=1)
    for who, jobs, limit in (("you", Job.objects.filter(team=team, owner=user), team.gpu_hours_per_day_per_user),
                             (team.name, Job.objects.filter(team=team), team.gpu_hours_per_day)):
        if limit is None:
            continue
        used = gpu_hours_since(jobs, since)
        if used >= limit:
            raise QuotaExceeded(f"{who} used {used:.1f} GPU-hours in the last 24 h; the limit is {limit:g} GPU-hours "
                                "per day: submit to the CPU queue or wait")


# ---------------------------------------------------------------------------- order
def _running_of_owner():
    return Coalesce(Subquery(
        Job.objects.filter(owner=OuterRef("owner"), team=OuterRef("team"), status=Job.Status.RUNNING)
        .values("owner").annotate(n=Count("pk")).values("n")[:1]), Value(0))


def ordered(queued):
    """``queued`` (a queryset of queued jobs) in the order they will run."""
    pinned = Case(When(queue_order__lt=0, then=Value(0)), default=Value(1), output_field=IntegerField())
    return queued.annotate(owner_running=_running_of_owner(), pinned=pinned).order_by(
        "-priority", "pinned", "owner_running", "queue_order", "pk")


def route_of(job):
    return job.route or job.queue


def on_route(route):
    """The jobs sent to ``route``: a memory tier's, or a plain queue's (no tier of their own)."""
    return Q(route=route) | Q(route="", queue=route)


def runners():
    """Each job kind's runner, ``(job_id, worker_name) -> final status, or None when the job was
    no longer queued``; each runs its work inside ``lifecycle.job_run``."""
    from explorer.jobs import kinds  # the registered kinds (explorer.jobs.kinds)

    return {name: kind.run for name, kind in kinds.KINDS.items()}


def run_next(route, worker_name):
    """Run the best runnable queued job of ``route``, whatever its kind (see the module
    docstring); returns its final status, or None when nothing could run (all at a quota, or none
    left)."""
    run = runners()
    candidates = ordered(Job.objects.filter(status=Job.Status.QUEUED, kind__in=list(run), cancel_requested=False)
                         .filter(on_route(route)).select_related("team"))
    for job in candidates[:200]:
        team = job.team
        running = Job.objects.filter(team=team, status=Job.Status.RUNNING)
        if team.max_running is not None and running.count() >= team.max_running:
            continue
        if team.max_running_per_user is not None and running.filter(owner=job.owner_id).count() >= team.max_running_per_user:
            continue
        status = run[job.kind](job.pk, worker_name)
        if status is not None:  # claimed and run (another worker may have taken it first)
            return status
    return None


def kick(routes=None):
    """Send a run message to each route with queued jobs and no message waiting in the broker (a
    message that found only quota-blocked jobs, or a lost one). Returns the routes kicked."""
    from explorer.jobs import tasks

    queued = Job.objects.filter(status=Job.Status.QUEUED)
    if routes is not None:
        queued = queued.filter(Q(route__in=routes) | Q(route="", queue__in=routes))
    kicked = []
    pending = _broker_lengths()
    for route, job_id in {(route_of(j), j.pk) for j in queued.only("route", "queue")}:
        if route in kicked or pending.get(route, 1) > 0:
            continue
        tasks.run_job.apply_async(args=[job_id], queue=route)
        kicked.append(route)
    return kicked


def _broker_lengths():
    """Messages waiting in each broker queue (Redis lists named after the queues); {} when the
    broker cannot be asked (then ``kick`` assumes messages are waiting and sends nothing). The
    broker is ``settings.REDIS_URL``: ``CELERY_BROKER_URL`` spells a unix socket Celery's way
    (``redis+socket://``), which redis-py refuses."""
    try:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        routes = {route_of(j) for j in Job.objects.filter(status=Job.Status.QUEUED).only("route", "queue")}
        return {r: client.llen(r) for r in routes}
    except Exception:  # noqa: BLE001 - a broker outage: the reaper tries again on its next tick
        log.warning("could not read the broker's queue lengths", exc_info=True)
        return {}


# ---------------------------------------------------------------------------- place and start time
def _tokens_per_step(spec):
    t = spec.get("train", {})
    return max(1, int(t.get("batch_size", 32)) * int(t.get("grad_accum_steps", 1)) * int(spec.get("model", {}).get("block_size", 64)))


def _speed(queue):
    """Tokens/s of this queue's recent finished jobs (median of the last 20), else a default."""
    seen = [s.get("tokens_per_s") for s in Job.objects.filter(queue=queue, kind="train", status=Job.Status.SUCCEEDED)
            .order_by("-finished_at").values_list("summary", flat=True)[:20]]
    seen = [x for x in seen if isinstance(x, (int, float)) and x > 0]
    return statistics.median(seen) if seen else DEFAULT_TOKENS_PER_S.get(queue, 20_000.0)


def _typical_seconds(queue, kind):
    """Wall time of this queue's recent finished jobs of ``kind`` (median of the last 20), else a default."""
    seen = [(finished - started).total_seconds() for started, finished in
            Job.objects.filter(queue=queue, kind=kind, status=Job.Status.SUCCEEDED, started_at__isnull=False,
                               finished_at__isnull=False).order_by("-finished_at")
            .values_list("started_at", "finished_at")[:20]]
    if seen:
        return statistics.median(seen)
    from explorer.jobs import kinds  # a job of another kind with none finished on its queue: the kind's guess

    return getattr(kinds.KINDS.get(kind), "default_seconds", None) or 30.0


# The spec sizes a waiting training job's duration needs, read in SQL by ``forecast``: decoding
# every waiting job's whole spec and summary into a model took most of a queue page's time
# (bench/load.py: 200 jobs waiting, 50 on the page).
SPEC_SIZES = {"batch_size": "train", "grad_accum_steps": "train", "block_size": "model"}
SIZE_COLUMNS = [f"spec_{key}" for key in SPEC_SIZES]


def _with_sizes(jobs):
    return jobs.annotate(**{f"spec_{key}": KT(f"spec__{section}__{key}") for key, section in SPEC_SIZES.items()})


def _sized_tokens_per_step(sizes):
    """``_tokens_per_step`` of the spec sizes ``_with_sizes`` read (JSON text, None where unset)."""
    t = {key: int(float(value)) for key, value in zip(SPEC_SIZES, sizes) if value is not None}
    return _tokens_per_step({"train": t, "model": t})


def _seconds_left(kind, queue, step, total_steps, tokens_per_step, speed_of, typical):
    steps_left = max(0, total_steps - step)
    if kind != "train":
        if kind not in typical:
            typical[kind] = _typical_seconds(queue, kind)
        return typical[kind] * steps_left / max(1, total_steps)
    return steps_left * tokens_per_step / speed_of(queue)


def duration_estimate(job, speed=None, typical=None):
    """Seconds ``job`` will take from now: the engine's own ETA while it runs; else, for training,
    its tokens over the queue's recent tokens/s; for another kind, the part left of the recent
    wall time of that kind (``typical``: {kind: seconds}, a cache filled as needed)."""
    if job.status == Job.Status.RUNNING and isinstance(job.summary.get("eta"), (int, float)):
        return float(job.summary["eta"])
    return _seconds_left(job.kind, job.queue, job.step, job.total_steps, _tokens_per_step(job.spec),
                         lambda queue: speed or _speed(queue), {} if typical is None else typical)


def _online_counts(routes):
    """{route: live workers taking it} (1 where none has registered), in one query."""
    try:  # the workers registry, where installed
        from explorer.scheduling.workers import Worker, consumed, offline_cutoff
    except ImportError:
        return dict.fromkeys(routes, 1)
    live = [consumed(w) for w in Worker.objects.filter(status=Worker.Status.ONLINE, heartbeat_at__gte=offline_cutoff())]
    return {route: max(1, sum(route in queues for queues in live)) for route in routes}


# A forecast is reused for FORECAST_TTL_S seconds while the queue's shape stays the same: every
# queue page and job list asks for one, and computing it took half of a quiet GET /api/v1/jobs
# (bench/load.py: 200 jobs waiting). The shape is one aggregate over the waiting and running jobs
# of the routes (how many of each, the newest, the sums of priorities and queue orders), so a
# submission, start, end, cancel, retry or reorder shows at once in every process; the running
# jobs' ETAs and the workers online drift for at most the TTL.
FORECAST_TTL_S = 2.0
_forecasts: dict = {}
_forecasts_lock = threading.Lock()


def _queue_shape(on_routes):
    active = Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).filter(on_routes)
    shape = active.aggregate(
        queued=Count("pk", filter=Q(status=Job.Status.QUEUED)), running=Count("pk", filter=Q(status=Job.Status.RUNNING)),
        last=Max("pk"), newest=Max("created_at"), priorities=Sum("priority"), orders=Sum("queue_order"))
    return tuple(shape.values())


def forecast(routes):
    """``_forecast(routes)``, reused while the queue keeps its shape (at most FORECAST_TTL_S)."""
    routes = frozenset(routes)
    if not routes:
        return {}
    shape = _queue_shape(Q(route__in=routes) | Q(route="", queue__in=routes))
    with _forecasts_lock:
        hit = _forecasts.get(routes)
    if hit and hit[0] == shape and time.monotonic() - hit[1] < FORECAST_TTL_S:
        return hit[2]
    out = _forecast(routes)
    with _forecasts_lock:
        if len(_forecasts) > 64:  # routes seen together: a handful in practice
            _forecasts.clear()
        _forecasts[routes] = (shape, time.monotonic(), out)
    return out


def _forecast(routes):
    """{job_id: {"position", "starts_in_s"}} for every queued job of ``routes``: the
    workers of each route take the jobs in order, each as soon as one is free (the running jobs'
    ETAs first). A job at a quota waits for its turn like the others: a rough but honest bound.
    A fixed number of queries however many jobs wait or run on however many routes: one for the
    waiting jobs, one for the running ones, one for the workers, one per queue (speed) and kind
    (typical time), and only the columns the estimate reads."""
    routes = set(routes)
    if not routes:
        return {}
    on_routes = Q(route__in=routes) | Q(route="", queue__in=routes)
    columns = ["pk", "kind", "queue", "route", "step", "total_steps", *SIZE_COLUMNS]
    queued = list(_with_sizes(ordered(Job.objects.filter(status=Job.Status.QUEUED).filter(on_routes)))
                  .values_list(*columns))
    if not queued:
        return {}
    running = _with_sizes(Job.objects.filter(status=Job.Status.RUNNING).filter(on_routes)).values_list(
        *columns, "summary")
    speeds, typical = {}, {}

    def speed_of(queue):
        if queue not in speeds:
            speeds[queue] = _speed(queue)
        return speeds[queue]

    def seconds(kind, queue, step, total_steps, *sizes):
        return _seconds_left(kind, queue, step, total_steps, _sized_tokens_per_step(sizes), speed_of, typical)

    free = {route: [] for route in routes}
    for _, kind, queue, route, step, total_steps, *sizes, summary in running:
        eta = (summary or {}).get("eta")
        free[route or queue].append(float(eta) if isinstance(eta, (int, float))
                                    else seconds(kind, queue, step, total_steps, *sizes))
    workers = _online_counts(routes)
    for route in routes:
        n = workers[route]
        free[route] = sorted((sorted(free[route]) + [0.0] * n)[:max(n, len(free[route]))])
    out, places = {}, dict.fromkeys(routes, 0)
    for pk, kind, queue, route, step, total_steps, *sizes in queued:
        route = route or queue
        places[route] += 1
        start = free[route].pop(0)
        out[pk] = {"position": places[route], "starts_in_s": start}
        free[route].append(start + seconds(kind, queue, step, total_steps, *sizes))
        free[route].sort()
    return out


def positions(jobs):
    """{job_id: forecast entry or None} for ``jobs`` (any statuses)."""
    routes = {route_of(j) for j in jobs if j.status == Job.Status.QUEUED}
    plan = forecast(routes) if routes else {}
    return {j.pk: plan.get(j.pk) for j in jobs}


# ---------------------------------------------------------------------------- reorder
def set_priority(user, job, priority):
    value = check_priority(user, job.team, priority)
    check_can_act(user, job, "reprioritise")
    if job.owner_id != user.pk and not is_manager(user, job.team):
        raise NotAllowed("only maintainers can reprioritise another member's job")
    _reorder(job, priority=value)


def move_to_top(user, job):
    """A maintainer puts a queued job first in line: raised to the highest priority waiting on
    its route and placed before every other job of it (fair share included)."""
    if not is_manager(user, job.team):
        raise NotAllowed(f"only maintainers and admins of {job.team.name} can reorder the queue")
    waiting = Job.objects.filter(status=Job.Status.QUEUED).filter(on_route(route_of(job)))
    first = waiting.order_by("queue_order").values_list("queue_order", flat=True).first()
    top = max(waiting.values_list("priority", flat=True), default=job.priority)
    _reorder(job, queue_order=min(first if first is not None else 0.0, 0.0) - 1.0, priority=max(top, job.priority))


def _reorder(job, **fields):
    from explorer.jobs import services

    with transaction.atomic():
        if not Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).exists():
            raise NotAllowed(f"{job.display_name} is {Job.objects.get(pk=job.pk).status}: only queued jobs can be reordered")
        change = {**fields}
        if "priority" in change:
            change["priority_name"] = PRIORITY_NAMES[change["priority"]]
        messages = services.append_events(job.pk, [("queue", {k: v for k, v in change.items() if k != "queue_order"}
                                                    | {"reordered": "queue_order" in change})],
                                          **{k: v for k, v in fields.items()})
    services.publish(job.pk, messages, team_id=job.team_id, places=True)
