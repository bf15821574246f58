"""The workers registry: who can run jobs, on what device, how busy; the fit gate; draining.

Each Celery worker registers itself when it starts (``tasks`` connects the signals):

- at ``celeryd_after_setup`` it measures its device (CPU cores and RAM, its container's limit
  when lower; or the GPU's name and memory from ``nvidia-smi``, which keeps CUDA out of the
  forking parent process) and subscribes, besides its plain queues (``-Q cpu``), to
  - the memory tiers it can hold: ``cpu.1g``, ``cpu.2g``, ``cpu.4g``... every tier of
    ``TIERS_GIB`` up to its usable memory (memory × ``WORKER_MEMORY_FRACTION`` / concurrency);
  - its own queue, ``cpu.worker.<name>``, for a job that only it can hold;
  so no command line names a tier;
- at ``worker_ready`` it saves its ``Worker`` row and starts a ``Heartbeat`` thread: every
  ``WORKER_HEARTBEAT_S`` its CPU %, RAM (and GPU) use; its current job within a second;
- at ``worker_shutdown`` it marks itself offline. A worker whose heartbeat is older than
  ``WORKER_OFFLINE_AFTER_S`` (killed, host lost) counts as offline too.

The fit gate (``fit_gate``) compares a job's estimated memory with the workers of its queue: a
job no worker can hold is refused with the numbers; one every live worker can hold goes to the
plain queue; one only some can hold goes to the smallest tier that covers it, which only those
consume (or, between tiers, to the one worker that can). Until a worker of the queue has
registered (a fresh install), ``WORKER_MEMORY_BUDGET_MB`` decides, as before.

Draining (maintainers): the worker cancels its consumers (``app.control.cancel_consumer``),
finishes its current job and takes no new one; undraining adds them back.
"""
import logging
import os
import platform
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Count
from django.utils import timezone

from explorer.accounts.models import Membership
from explorer.scheduling.models import Worker

log = logging.getLogger(__name__)

GiB = 2**30
TIERS_GIB = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # memory tiers: queue "cpu.8g" = 8 GiB usable


def _setting(name, default):
    return getattr(settings, name, default)


def fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


class FitError(Exception):
    """A job no worker of its queue can hold; the message gives the numbers."""


class NotAllowed(Exception):
    """The user may not drain workers."""


# ---------------------------------------------------------------------------- queues
def tier_queue(queue, gib):
    return f"{queue}.{gib}g"


def direct_queue(queue, name):
    """The queue only worker ``name`` consumes: for a job between two tiers that only it can hold."""
    return f"{queue}.worker.{name}"


def tier_queues(queues, usable_bytes):
    """The tier queues a worker with ``usable_bytes`` per job consumes: every tier it can hold."""
    return [tier_queue(q, g) for q in queues for g in TIERS_GIB if g * GiB <= usable_bytes]


def consumed(worker):
    """Every broker queue ``worker`` takes messages from."""
    return [*worker.queues, *worker.tiers, *(direct_queue(q, worker.name) for q in worker.queues)]


# ---------------------------------------------------------------------------- liveness
def offline_cutoff():
    return timezone.now() - timedelta(seconds=_setting("WORKER_OFFLINE_AFTER_S", 30))


def is_live(worker):
    """Online or draining, with a recent heartbeat."""
    return worker.status != Worker.Status.OFFLINE and worker.heartbeat_at >= offline_cutoff()


def state_of(worker):
    return worker.status if is_live(worker) else Worker.Status.OFFLINE


def online_count(route):
    """Live workers that take new jobs from ``route`` (a queue, a tier or a worker's own queue)."""
    return sum(1 for w in Worker.objects.filter(status=Worker.Status.ONLINE, heartbeat_at__gte=offline_cutoff())
               if route in consumed(w))


# ---------------------------------------------------------------------------- the fit gate
def _pool(queue):
    """(pool, live, known): the queue's registered workers (``known``; those of unknown memory
    left out) and the ones the gate judges by: the live ones, else all (stopped: a job may wait)."""
    known = [w for w in Worker.objects.all() if queue in w.queues and w.usable_bytes > 0]
    live = [w for w in known if is_live(w)]
    return (live or known), bool(live), known


def fit_gate(queue, need_bytes, what="training memory"):
    """The broker queue for a job of ``queue`` needing ``need_bytes`` (of ``what``); ``FitError``
    when no worker can hold it (or, with no worker registered, when it exceeds
    ``WORKER_MEMORY_BUDGET_MB``)."""
    pool, live, known = _pool(queue)
    if not pool:
        budget = settings.WORKER_MEMORY_BUDGET_MB[queue] * 2**20
        if need_bytes > budget:
            raise FitError(f"estimated {what} {fmt_bytes(need_bytes)} exceeds the {queue} workers' budget "
                           f"of {fmt_bytes(budget)}")
        return queue
    biggest = max(pool, key=lambda w: (w.usable_bytes, w.name))
    if need_bytes > biggest.usable_bytes:
        raise FitError(f"estimated {what} {fmt_bytes(need_bytes)} fits no {queue} worker: the largest "
                       f"{'online' if live else 'registered'} {queue} worker has {fmt_bytes(biggest.usable_bytes)} "
                       f"usable ({biggest.name})")
    if need_bytes <= min(w.usable_bytes for w in known):  # a stopped worker takes from the plain queue when back
        return queue
    for gib in TIERS_GIB:
        if need_bytes <= gib * GiB <= biggest.usable_bytes:
            return tier_queue(queue, gib)
    return direct_queue(queue, biggest.name)  # between the tiers: only the biggest can take it


def capacity(queue):
    """The most memory a job of ``queue`` may need now (bytes): what the composer can show as
    the budget. The largest worker's usable memory, else ``WORKER_MEMORY_BUDGET_MB``."""
    pool, _, _ = _pool(queue)
    return max((w.usable_bytes for w in pool), default=settings.WORKER_MEMORY_BUDGET_MB[queue] * 2**20)


def route_for(queue, need_bytes):
    """``fit_gate``'s route, or the plain queue when the job no longer fits (a worker left since
    it was accepted): it waits there rather than being lost."""
    try:
        return fit_gate(queue, need_bytes)
    except FitError:
        return queue


# ---------------------------------------------------------------------------- the device
def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _meminfo():
    text = _read("/proc/meminfo") or ""
    return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def _cgroup_memory():
    """(limit, used) of this container's memory cgroup (v2, then v1); (None, None) without one."""
    for limit_path, used_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, used = (_read(limit_path) or "").strip(), (_read(used_path) or "").strip()
        if limit.isdigit():
            return int(limit), int(used) if used.isdigit() else None
    return None, None


def host_memory():
    """(total, used) bytes of RAM this worker may use: the host's, or its container's limit when lower."""
    info = _meminfo()
    total = info.get("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    used = total - info["MemAvailable"] if "MemAvailable" in info else None
    limit, cg_used = _cgroup_memory()
    if limit and limit < total:
        return limit, cg_used if cg_used is not None else used
    return total, used


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_name():
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "CPU"


def gpu_query():
    """The first visible GPU from ``nvidia-smi``: {"name", "memory", "used", "util"}; None without one."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    cmd = ["nvidia-smi", "--query-gpu=name,memory.total,memory.used,utilization.gpu", "--format=csv,noheader,nounits"]
    if visible.isdigit():
        cmd += ["-i", visible]
    try:
        line = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout.splitlines()[0]
        name, total, used, util = (part.strip() for part in line.split(","))
        return {"name": name, "memory": int(total) * 2**20, "used": int(used) * 2**20,
                "util": float(util) if util.replace(".", "").isdigit() else None}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def probe_device(queues, concurrency=1):
    """This machine as a worker of ``queues``: the Worker row's device fields."""
    gpu = gpu_query() if "gpu" in queues else None
    memory = gpu["memory"] if gpu else host_memory()[0]
    if "gpu" in queues and gpu is None:
        log.warning("a gpu worker without nvidia-smi: its memory is unknown, the fit gate leaves it out")
        memory = 0
    fraction = _setting("WORKER_MEMORY_FRACTION", 0.8)
    return {
        "device_kind": "cuda" if "gpu" in queues else "cpu",
        "device_name": gpu["name"] if gpu else cpu_name(),
        "cpu_count": cpu_count(),
        "memory_bytes": memory,
        "usable_bytes": int(memory * fraction / max(1, concurrency)),
        "concurrency": concurrency,
    }


def _cpu_times():
    fields = (_read("/proc/stat") or "").split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    return sum(values), values[3] + (values[4] if len(values) > 4 else 0)  # (total, idle + iowait)


def utilisation(kind, before=None):
    """This host's CPU % since ``before`` (a ``_cpu_times``; the load average without it), RAM
    used and, for a GPU worker, the GPU's; returns (fields, the times to pass next)."""
    now = _cpu_times()
    if before and now and now[0] > before[0]:
        cpu = 100.0 * (1 - (now[1] - before[1]) / (now[0] - before[0]))
    else:
        cpu = min(100.0, 100.0 * os.getloadavg()[0] / cpu_count())
    fields = {"cpu_percent": round(cpu, 1), "memory_used_bytes": host_memory()[1]}
    if kind == "cuda":
        gpu = gpu_query()
        fields.update(gpu_percent=gpu and gpu["util"], gpu_memory_used_bytes=gpu and gpu["used"])
    return fields, now


# ---------------------------------------------------------------------------- in the worker process
_state = {}  # this process's registration: {"name", "queues", "device", "tiers", "heartbeat"}


def setup_queues(worker):
    """``celeryd_after_setup``: measure the device and consume its tier queues and own queue too."""
    queues = worker.app.amqp.queues
    plain = [q for q in queues.consume_from if "." not in q]
    concurrency = worker.concurrency if isinstance(worker.concurrency, int) else 1
    device = probe_device(plain, concurrency)
    tiers = tier_queues(plain, device["usable_bytes"])
    for name in [*tiers, *(direct_queue(q, worker.hostname) for q in plain)]:
        queues.select_add(name)
    _state.update(name=worker.hostname, queues=plain, device=device, tiers=tiers)
    log.info("worker %s: %s, %s usable per job; queues %s", worker.hostname, device["device_name"],
             fmt_bytes(device["usable_bytes"]), ", ".join([*plain, *tiers]))


def register(name, current_job=None):
    """``worker_ready``: save this worker's row (online, fresh) and start its heartbeat, which
    shows ``current_job(name)`` (the id of the job it runs, or None) on the row: the jobs app
    passes its lookup, as this registry does not read jobs."""
    if _state.get("name") != name:  # started without ``setup_queues`` (a test's in-process worker)
        _state.update(name=name, queues=["cpu"], device=probe_device(["cpu"]), tiers=[])
    _state["started_at"] = timezone.now()
    worker = save_row()
    beat = _state.get("heartbeat")
    if beat is None or not beat.is_alive():
        _state["heartbeat"] = Heartbeat(name, worker.device_kind, interval=_setting("WORKER_HEARTBEAT_S", 5.0),
                                        current_job=current_job)
        _state["heartbeat"].start()
    return worker


def save_row():
    """This process's ``Worker`` row, online, as registered (again, when it was deleted)."""
    import celery

    worker, _ = Worker.objects.update_or_create(name=_state["name"], defaults={
        **_state["device"], "queues": _state["queues"], "tiers": _state["tiers"], "status": Worker.Status.ONLINE,
        "current_job": None, "started_at": _state["started_at"], "heartbeat_at": timezone.now(), "pid": os.getpid(),
        "version": _state.get("version") or f"celery {celery.__version__} · python {platform.python_version()}",
    })
    return worker


def unregister(name=None):
    """``worker_shutdown``: stop the heartbeat and mark the worker offline."""
    beat = _state.pop("heartbeat", None)
    if beat is not None:
        beat.stop()
    name = name or _state.get("name")
    if name:
        Worker.objects.filter(name=name).update(status=Worker.Status.OFFLINE, current_job=None)


class Heartbeat(threading.Thread):
    """Every ``interval`` s, the worker's utilisation; every ``poll`` s, its current job."""

    def __init__(self, name, kind, interval=5.0, poll=1.0, current_job=None):
        super().__init__(daemon=True, name=f"worker-heartbeat-{name}")
        self.worker_name, self.kind, self.interval, self.poll = name, kind, interval, poll
        self.current_job = current_job
        self.stopped = threading.Event()

    def beat(self, cpu_before=None):
        fields, times = utilisation(self.kind, cpu_before)
        if not Worker.objects.filter(name=self.worker_name).update(heartbeat_at=timezone.now(), **fields):
            save_row()  # the row was deleted (by an admin, a test's flush): register again
        return times

    def run(self):
        times, last = self.beat(), time.monotonic()
        try:
            while not self.stopped.wait(self.poll):
                try:
                    job = self.current_job(self.worker_name) if self.current_job else None
                    Worker.objects.filter(name=self.worker_name).exclude(current_job_id=job).update(current_job_id=job)
                    if time.monotonic() - last >= self.interval:
                        times, last = self.beat(times), time.monotonic()
                except Exception:  # noqa: BLE001 - a database blip must not stop the heartbeat
                    log.warning("heartbeat of worker %s failed", self.worker_name, exc_info=True)
                    close_old_connections()
        finally:
            connection.close()

    def stop(self):
        self.stopped.set()
        self.join(timeout=5)


# ---------------------------------------------------------------------------- drain
def can_manage(user):
    """Staff, or a maintainer or admin of a shared team. (Everyone is the admin of their own
    personal team, so a team of one does not count.)"""
    if not user.is_authenticated:
        return False
    if user.is_staff:
        return True
    managed = (Membership.objects.filter(user=user, role__in=(Membership.Role.MAINTAINER, Membership.Role.ADMIN))
               .annotate(n=Count("team__memberships")).filter(n__gt=1))
    return managed.exists()


def control(action, worker):
    """Ask ``worker`` to ``cancel_consumer`` or ``add_consumer`` each of its queues (a broadcast
    over the broker; a stopped worker starts with all its queues anyway)."""
    from config.celery_app import app

    for queue in consumed(worker):
        getattr(app.control, action)(queue, destination=[worker.name])


def set_draining(user, worker, draining):
    """Drain (or undrain) ``worker``: it finishes its current job and takes no new one."""
    if not can_manage(user):
        raise NotAllowed("only staff and the maintainers or admins of a team can drain workers")
    status = Worker.Status.DRAINING if draining else Worker.Status.ONLINE
    Worker.objects.filter(pk=worker.pk).exclude(status=Worker.Status.OFFLINE).update(status=status)
    control("cancel_consumer" if draining else "add_consumer", worker)
    worker.refresh_from_db()
    return worker


# ---------------------------------------------------------------------------- what pages show
def worker_to_dict(worker, team_ids, now=None):
    """``worker`` for the API and the page; its current job in full only for the user's teams
    (``team_ids``); for another team's just "busy"."""
    now = now or timezone.now()
    live = is_live(worker)
    job = worker.current_job if live else None
    current = None
    if job is not None:
        current = ({"id": job.pk, "name": job.display_name, "url": f"/jobs/{job.pk}/", "team": job.team.name,
                    "step": job.step, "total_steps": job.total_steps}
                   if job.team_id in team_ids else {"busy": True})
    return {
        "name": worker.name,
        "status": state_of(worker),
        "queues": worker.queues,
        "tiers": worker.tiers,
        "device": {"kind": worker.device_kind, "name": worker.device_name, "cpu_count": worker.cpu_count,
                   "memory_bytes": worker.memory_bytes, "usable_bytes": worker.usable_bytes,
                   "concurrency": worker.concurrency},
        "current_job": current,
        "utilisation": {"cpu_percent": worker.cpu_percent, "memory_used_bytes": worker.memory_used_bytes,
                        "gpu_percent": worker.gpu_percent, "gpu_memory_used_bytes": worker.gpu_memory_used_bytes}
        if live else None,
        "version": worker.version,
        "started_at": worker.started_at.isoformat(),
        "heartbeat_at": worker.heartbeat_at.isoformat(),
        "uptime_s": (now - worker.started_at).total_seconds() if live else None,
    }


def workers_for(user):
    """Every registered worker, as ``user`` may see them, and whether they may drain them."""
    team_ids = set(Membership.objects.filter(user=user).values_list("team_id", flat=True))
    rows = [worker_to_dict(w, team_ids, timezone.now()) for w in Worker.objects.select_related("current_job__team")]
    rows.sort(key=lambda w: (w["status"] == Worker.Status.OFFLINE, w["name"]))  # the live ones first
    return {"workers": rows, "can_manage": can_manage(user),
            "offline_after_s": _setting("WORKER_OFFLINE_AFTER_S", 30)}
