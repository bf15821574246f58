"""Job kinds: what a job of each kind needs from the shared machinery, and the registry of them.

A kind (training, inference, tokenizer training...) lives in its own app and registers itself
from that app's ``AppConfig.ready()``. The shared machinery (``explorer.jobs.submission``, the
run lifecycle, the scheduler, the reaper) looks kinds up here by ``Job.kind`` and never imports
them. Adding a kind: docs/web.md, "Adding a job kind".
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol


@dataclasses.dataclass
class Plan:
    """A validated submission, as a kind's ``plan`` returns it: what the job row will hold and
    what the gates need (the queue for the quotas, the memory for the fit gate)."""

    spec: dict  # the Job's spec, as stored
    queue: str = "cpu"  # "cpu" or "gpu": the quotas' and the fit gate's queue
    memory_bytes: int = 0  # the estimated memory its run needs (the fit gate's figure)
    params: int = 0
    total_steps: int = 100
    name: str = ""
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)  # other Job fields (dataset, parent...)


class JobKind(Protocol):
    """What the shared machinery asks of a kind."""

    name: str  # the ``Job.kind`` value: "train"
    label: str  # what people read: "Training"
    task: str  # the Celery task its messages name (any of them runs the best queued job of a route)
    fit_field: str  # the field a refusal by the fit gate is reported under
    fit_what: str  # what the estimate is of, in the fit gate's message: "training memory"
    fit_advice: str  # what to change when it fits no worker
    out_of_memory_advice: str  # what to change after running out of memory
    default_seconds: float | None  # a guess at its run time while none has finished on its queue (None: from tokens/s)
    resumable: bool  # requeued (to resume from a checkpoint) when its worker is lost
    # optional, False when absent: its jobs are their owner's only (the team's other members do not
    # see them: ``explorer.jobs.access.jobs_visible_to``), as a chat's turns are
    private: bool

    def plan(self, user, team, payload) -> Plan:
        """Validate ``payload`` for ``team``; ``SpecError`` by field for anything refused."""

    def memory_bytes(self, job) -> int:
        """The job's estimated memory, again at enqueue time (0 when unknown)."""

    def run(self, job_id, worker_name):
        """Run the queued job inside ``explorer.jobs.lifecycle.job_run``; its final status, or None
        when it was no longer queued."""

    def requeue(self, job, reason) -> tuple[bool, int | None]:
        """Only for a ``resumable`` kind: queue the job of a lost worker again as its next attempt;
        whether it was (False when it had meanwhile left "running") and the step it resumes at."""

    def page(self, request, job) -> tuple[str, dict]:
        """The job's page: a template and its context (the view adds ``job`` and ``job_data``)."""


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    """Add a kind (from its app's ``AppConfig.ready()``); registering a name twice replaces it."""
    KINDS[kind.name] = kind
    return kind


def get(name: str) -> JobKind:
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown job kind {name!r}; choose from {sorted(KINDS)}") from None


def private_kinds():
    """The names of the kinds whose jobs only their owner sees."""
    return sorted(name for name, kind in KINDS.items() if getattr(kind, "private", False))


def choices():
    """``Job.kind``'s choices: every registered kind, as (name, label)."""
    return [(kind.name, kind.label) for kind in KINDS.values()]
