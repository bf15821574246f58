"""Tokenizers a team trained in the lab or imported."""
import secrets

from django.conf import settings
from django.db import models


def tokenizer_upload_to(instance, filename):
    # The engine's own file name (tokenizer.json, tokenizer.model) tells ``tokenlab.load`` the format.
    return f"tokenizers/team-{instance.team_id}/{secrets.token_hex(8)}-{filename}"


class Tokenizer(models.Model):
    """A tokenizer a team trained in the lab (or imported): the engine's saved file plus how it was made."""

    class Status(models.TextChoices):
        TRAINING = "training"
        READY = "ready"
        FAILED = "failed"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="tokenizers")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=40)
    settings = models.JSONField(default=dict, blank=True)
    vocab_size = models.PositiveIntegerField(default=0)
    corpus = models.CharField(max_length=300, blank=True, help_text="What it was trained on, in words")
    file = models.FileField(upload_to=tokenizer_upload_to, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.READY, db_index=True)
    error = models.TextField(blank=True)
    job = models.ForeignKey("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "explorer_tokenizer"  # the table it had in the one-app layout
        ordering = ["-created_at"]

    def __str__(self):
        return self.name
