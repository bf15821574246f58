"""Teams, jobs and their event logs, uploaded datasets, lab tokenizers, API tokens."""
import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone


class Team(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="teams")
    created_at = models.DateTimeField(auto_now_add=True)

    # Quotas, set by the team's admins; empty = no limit (explorer.scheduling.queue). The running limits
    # hold jobs in the queue; the others refuse a submission with a message.
    max_running = models.PositiveIntegerField(null=True, blank=True, help_text="Jobs of the team running at once")
    max_running_per_user = models.PositiveIntegerField(null=True, blank=True, help_text="Jobs of one member running at once")
    max_active_per_user = models.PositiveIntegerField(null=True, blank=True,
                                                      help_text="Jobs of one member queued or running (more are refused)")
    gpu_hours_per_day = models.FloatField(null=True, blank=True, help_text="GPU-hours the team may use in 24 h")
    gpu_hours_per_day_per_user = models.FloatField(null=True, blank=True, help_text="GPU-hours one member may use in 24 h")

    def __str__(self):
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        MEMBER = "member"
        MAINTAINER = "maintainer"
        ADMIN = "admin"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="unique_membership")]

    def __str__(self):
        return f"{self.user} in {self.team} ({self.role})"


def dataset_upload_to(instance, filename):
    return f"datasets/team-{instance.team_id}/{secrets.token_hex(8)}.txt"


class Dataset(models.Model):
    """A UTF-8 text file a user uploaded; usable as the "text" data source by their team."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="datasets")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    name = models.CharField(max_length=200)
    file = models.FileField(upload_to=dataset_upload_to)
    size_bytes = models.PositiveBigIntegerField()
    n_chars = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.name


def tokenizer_upload_to(instance, filename):
    # The engine's own file name (tokenizer.json, tokenizer.model) tells ``tokenlab.load`` the format.
    return f"tokenizers/team-{instance.team_id}/{secrets.token_hex(8)}-{filename}"


class Tokenizer(models.Model):
    """A tokenizer a team trained in the lab (or imported): the engine's saved file plus how it was made."""

    class Status(models.TextChoices):
        TRAINING = "training"
        READY = "ready"
        FAILED = "failed"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="tokenizers")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=40)
    settings = models.JSONField(default=dict, blank=True)
    vocab_size = models.PositiveIntegerField(default=0)
    corpus = models.CharField(max_length=300, blank=True, help_text="What it was trained on, in words")
    file = models.FileField(upload_to=tokenizer_upload_to, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.READY, db_index=True)
    error = models.TextField(blank=True)
    job = models.ForeignKey("Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.name


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="jobs")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=20, default="train")
    # The engine's JobSpec as JSON: {"model": {...}, "data": {...}, "train": {...}}.
    spec = models.JSONField()
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, null=True, blank=True, related_name="jobs")
    queue = models.CharField(max_length=20, default="cpu")
    # the broker queue its messages go to: the queue, or a memory tier of it ("cpu.8g"); "" = queue
    route = models.CharField(max_length=40, blank=True, default="")
    params = models.PositiveBigIntegerField(default=0)
    # explorer.scheduling.queue: high (2) before normal (1) before low (0); then fair share; then queue_order
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
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["team", "-created_at"]),
            models.Index(fields=["queue", "status", "created_at"]),
            # the queue's fair share counts each owner's running jobs (explorer.scheduling.queue)
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
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="unique_job_seq")]

    def as_message(self):
        return {"seq": self.seq, "kind": self.kind, "ts": self.ts, "data": self.payload}


class ApiToken(models.Model):
    """A personal API token. Only its SHA-256 is stored; the token is shown once at creation."""

    PREFIX = "lae_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    # the one team the token acts in (its jobs, datasets, tokenizers); None: all the user's teams
    # (tokens made before tokens were scoped)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, null=True, blank=True, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=12, help_text="First characters, to recognise the token")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    @staticmethod
    def hash(raw):
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name, team=None):
        raw = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, team=team, name=name, key_hash=cls.hash(raw), hint=raw[:10])
        return token, raw

    @classmethod
    def authenticate(cls, raw):
        """The token's user, with ``token_team_id`` set when the token is scoped to a team
        (``explorer.accounts.teams`` then shows that team only); None for an unknown or revoked token,
        or one whose user has left its team."""
        token = cls.objects.select_related("user").filter(key_hash=cls.hash(raw), revoked_at=None).first()
        if token is None or not token.user.is_active:
            return None
        if token.team_id is not None and not Membership.objects.filter(user=token.user, team_id=token.team_id).exists():
            return None
        cls.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        user = token.user
        user.token_team_id = token.team_id
        return user


class Worker(models.Model):
    """A Celery worker as it registered itself at start (explorer.scheduling.workers): its device, the
    queues it takes jobs from and, from its heartbeats (every few seconds), how busy it is."""

    class Status(models.TextChoices):
        ONLINE = "online"
        DRAINING = "draining"  # finishes its current job, takes no new one
        OFFLINE = "offline"  # stopped, or no heartbeat for WORKER_OFFLINE_AFTER_S

    name = models.CharField(max_length=200, unique=True)  # Celery's hostname: "cpu@box"
    queues = models.JSONField(default=list)  # the plain queues it serves: ["cpu"]
    tiers = models.JSONField(default=list)  # and their memory tiers it can hold: ["cpu.1g", "cpu.2g"]
    device_kind = models.CharField(max_length=10, default="cpu")  # "cpu" or "cuda"
    device_name = models.CharField(max_length=200, blank=True)
    cpu_count = models.PositiveIntegerField(default=0)
    # RAM for a CPU worker, the GPU's memory for a GPU worker
    memory_bytes = models.PositiveBigIntegerField(default=0)
    # what one job may use: memory × WORKER_MEMORY_FRACTION / concurrency (the fit gate's figure)
    usable_bytes = models.PositiveBigIntegerField(default=0)
    concurrency = models.PositiveSmallIntegerField(default=1)
    version = models.CharField(max_length=100, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ONLINE, db_index=True)
    current_job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)

    # utilisation at the last heartbeat: the host's (CPU %, RAM used) and the GPU's
    cpu_percent = models.FloatField(null=True, blank=True)
    memory_used_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    gpu_percent = models.FloatField(null=True, blank=True)
    gpu_memory_used_bytes = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"worker {self.name} ({self.status})"
