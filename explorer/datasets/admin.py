from django.contrib import admin

from explorer.datasets.models import Dataset


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "owner", "size_bytes", "created_at")
