from django.contrib import admin

from explorer.pretrained.models import UploadedModel


@admin.register(UploadedModel)
class UploadedModelAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "owner", "model_type", "parameters", "size_bytes", "created_at")
