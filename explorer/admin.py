from django.contrib import admin

from explorer.models import ApiToken, Dataset, Job, JobEvent, Membership, Team, Worker


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created_at")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [MembershipInline]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "team", "owner", "status", "queue", "step", "total_steps", "worker", "created_at")
    list_filter = ("status", "queue", "team")
    search_fields = ("name", "owner__username", "worker")
    readonly_fields = ("last_seq", "heartbeat_at", "celery_task_id")


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "device_kind", "device_name", "cpu_count", "memory_bytes", "heartbeat_at")
    list_filter = ("status", "device_kind")
    readonly_fields = ("heartbeat_at", "started_at", "cpu_percent", "memory_used_bytes", "gpu_percent",
                       "gpu_memory_used_bytes", "current_job")


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ("job", "seq", "kind", "ts")
    list_filter = ("kind",)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "owner", "size_bytes", "created_at")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "hint", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("key_hash",)
