from django.apps import AppConfig


class SchedulingConfig(AppConfig):
    """Scheduling: the queue's order, quotas and roles; the workers."""

    name = "explorer.scheduling"
    label = "scheduling"
