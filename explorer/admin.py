from django.contrib import admin

from explorer.models import ApiToken, Dataset, Job, JobEvent, Membership, Team


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
