from django.contrib import admin

from explorer.jobs.models import Job, JobEvent


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "team", "owner", "status", "queue", "step", "total_steps", "worker", "created_at")
    list_filter = ("status", "queue", "team")
    search_fields = ("name", "owner__username", "worker")
    readonly_fields = ("last_seq", "heartbeat_at", "celery_task_id")


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ("job", "seq", "kind", "ts")
    list_filter = ("kind",)
