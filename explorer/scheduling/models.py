"""The Celery workers the queue hands jobs to."""
from django.db import models
from django.utils import timezone


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
    current_job = models.ForeignKey("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)

    # utilisation at the last heartbeat: the host's (CPU %, RAM used) and the GPU's
    cpu_percent = models.FloatField(null=True, blank=True)
    memory_used_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    gpu_percent = models.FloatField(null=True, blank=True)
    gpu_memory_used_bytes = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        db_table = "explorer_worker"  # the table it had in the one-app layout
        ordering = ["name"]

    def __str__(self):
        return f"worker {self.name} ({self.status})"
