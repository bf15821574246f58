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

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Count, IntegerField, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from explorer.accounts.models import Membership

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


# ---------------------------------------------------------------------------- roles
def role_of(user, team):
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, team=team).values_list("role", flat=True).first()


def is_manager(user, team):
    """Maintainer or admin of ``team`` (may act on any of its jobs)."""
    return role_of(user, team) in (Membership.Role.MAINTAINER, Membership.Role.ADMIN)


def is_admin(user, team):
    return role_of(user, team) == Membership.Role.ADMIN


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
    no longer queued``; each runs its work inside ``services.job_run``."""
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
    broker cannot be asked (then ``kick`` assumes messages are waiting and sends nothing)."""
    try:
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2)
        routes = {route_of(j) for j in Job.objects.filter(status=Job.Status.QUEUED).only("route", "queue")}
        return {r: client.llen(r) for r in routes}
    except Exception:  # noqa: BLE001 - a broker outage: the reaper tries again on its next tick
        log.warning("could not read the broker's queue lengths", exc_info=True)
        return {}


# ---------------------------------------------------------------------------- place and start time
def _workers(route):
    """How many workers serve ``route`` (registered and online; 1 when none has registered)."""
    try:
        from explorer.scheduling.workers import online_count  # the workers registry, where installed
    except ImportError:
        return 1
    return max(1, online_count(route))


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


def duration_estimate(job, speed=None, typical=None):
    """Seconds ``job`` will take from now: the engine's own ETA while it runs; else, for training,
    its tokens over the queue's recent tokens/s; for another kind, the part left of the recent
    wall time of that kind (``typical``: {kind: seconds}, a cache filled as needed)."""
    if job.status == Job.Status.RUNNING and isinstance(job.summary.get("eta"), (int, float)):
        return float(job.summary["eta"])
    steps_left = max(0, job.total_steps - job.step)
    if job.kind != "train":
        typical = {} if typical is None else typical
        if job.kind not in typical:
            typical[job.kind] = _typical_seconds(job.queue, job.kind)
        return typical[job.kind] * steps_left / max(1, job.total_steps)
    speed = speed or _speed(job.queue)
    return steps_left * _tokens_per_step(job.spec) / speed


def forecast(routes):
    """{job_id: {"position", "starts_in_s"}} for every queued job of ``routes``: the
    workers of each route take the jobs in order, each as soon as one is free (the running jobs'
    ETAs first). A job at a quota waits for its turn like the others: a rough but honest bound."""
    out = {}
    for route in routes:
        queued = list(ordered(Job.objects.filter(status=Job.Status.QUEUED).filter(on_route(route))))
        if not queued:
            continue
        running = Job.objects.filter(status=Job.Status.RUNNING).filter(on_route(route))
        typical = {}
        free = sorted(duration_estimate(j, typical=typical) for j in running)
        n = _workers(route)
        free = (free + [0.0] * n)[:max(n, len(free))]
        free.sort()
        speed = _speed(queued[0].queue)
        for position, job in enumerate(queued, start=1):
            start = free.pop(0)
            out[job.pk] = {"position": position, "starts_in_s": start}
            free.append(start + duration_estimate(job, speed, typical))
            free.sort()
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
    services.publish(job.pk, messages, team_id=job.team_id)
