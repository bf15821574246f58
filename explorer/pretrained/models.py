"""Models a team uploaded (a GGUF file, a zipped transformers directory), converted to our decoder."""
from pathlib import Path

from django.conf import settings
from django.db import models


class UploadedModel(models.Model):
    """A converted copy under ``MODEL_UPLOAD_ROOT``/``directory`` (``engine.interop.byo``'s
    layout), usable by its team only. The row is made only once the copy is whole and checked."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="uploaded_models")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    name = models.CharField(max_length=200)
    directory = models.CharField(max_length=200, unique=True)  # relative to MODEL_UPLOAD_ROOT; never shown
    source_format = models.CharField(max_length=16)  # "gguf" or "transformers"
    file_name = models.CharField(max_length=255)
    size_bytes = models.PositiveBigIntegerField()  # the uploaded file's
    model_type = models.CharField(max_length=32)  # transformers' model_type: llama, qwen2, ...
    parameters = models.PositiveBigIntegerField()
    context = models.PositiveIntegerField()
    chat = models.BooleanField(default=False)  # has a chat template
    config = models.JSONField()  # our ModelConfig
    logits_check = models.JSONField()  # the logits check: tokens, max_abs_diff, tolerance, seconds
    import_job = models.ForeignKey("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.name

    @property
    def key(self):
        """Its key among the inference form's pretrained models."""
        return f"upload-{self.pk}"

    @property
    def path(self) -> Path:
        return Path(settings.MODEL_UPLOAD_ROOT) / self.directory
