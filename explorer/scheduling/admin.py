from django.contrib import admin

from explorer.scheduling.models import Worker


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "device_kind", "device_name", "cpu_count", "memory_bytes", "heartbeat_at")
    list_filter = ("status", "device_kind")
    readonly_fields = ("heartbeat_at", "started_at", "cpu_percent", "memory_used_bytes", "gpu_percent",
                       "gpu_memory_used_bytes", "current_job")
