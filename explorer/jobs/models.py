"""Jobs of every kind and their numbered event logs."""
from django.conf import settings
from django.db import models

from explorer.jobs import kinds


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="jobs")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=200, blank=True)
    # a registered job kind (explorer.jobs.kinds): each app adds its own from its AppConfig.ready()
    kind = models.CharField(max_length=20, default="train", choices=kinds.choices)
    # The engine's JobSpec as JSON: {"model": {...}, "data": {...}, "train": {...}}.
    spec = models.JSONField()
    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.PROTECT, null=True, blank=True, related_name="jobs")
    queue = models.CharField(max_length=20, default="cpu")
    # the broker queue its messages go to: the queue, or a memory tier of it ("cpu.8g"); "" = queue
    route = models.CharField(max_length=40, blank=True, default="")
    params = models.PositiveBigIntegerField(default=0)
    # explorer.jobs.queue: high (2) before normal (1) before low (0); then fair share; then queue_order
    priority = models.SmallIntegerField(default=1)
    queue_order = models.FloatField(default=0.0, help_text="Submission time (Unix); lowered to move a job up")
    # 1, then 2, 3, ... each time the job is retried (resuming from its last checkpoint)
    attempt = models.PositiveSmallIntegerField(default=1)
    # of those, the attempts the app started by itself after losing a worker (at most JOB_AUTO_RETRIES)
    auto_retries = models.PositiveSmallIntegerField(default=0)
    # the job whose checkpoint (at parent_step) this one started from: pretrain -> SFT -> DPO
    parent = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children")
    parent_step = models.PositiveIntegerField(null=True, blank=True)

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    device = models.CharField(max_length=100, blank=True)
    celery_task_id = models.CharField(max_length=100, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    # Latest progress, denormalised from the event log so lists need no event query.
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    last_seq = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "explorer_job"  # the table it had in the one-app layout
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["team", "-created_at"]),
            models.Index(fields=["queue", "status", "created_at"]),
            # the queue's fair share counts each owner's running jobs (explorer.jobs.queue)
            models.Index(fields=["owner", "team", "status"]),
            # recent finished jobs' speed, for estimated starts
            models.Index(fields=["queue", "status", "-finished_at"]),
        ]

    def __str__(self):
        return f"job {self.pk} ({self.status})"

    @property
    def is_terminal(self):
        return self.status in self.TERMINAL

    @property
    def display_name(self):
        return self.name or f"Job #{self.pk}"


class JobEvent(models.Model):
    """One event of a job, numbered 1, 2, 3, ... per job so clients can resume after a sequence."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=20)
    payload = models.JSONField()
    ts = models.FloatField(help_text="Unix time at which the worker produced the event")

    class Meta:
        db_table = "explorer_jobevent"  # the table it had in the one-app layout
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="unique_job_seq")]

    def as_message(self):
        return {"seq": self.seq, "kind": self.kind, "ts": self.ts, "data": self.payload}
