"""Text files a team uploaded, usable as a training job's data."""
import secrets

from django.conf import settings
from django.db import models


def dataset_upload_to(instance, filename):
    return f"datasets/team-{instance.team_id}/{secrets.token_hex(8)}.txt"


class Dataset(models.Model):
    """A UTF-8 text file a user uploaded; usable as the "text" data source by their team."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="datasets")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    name = models.CharField(max_length=200)
    file = models.FileField(upload_to=dataset_upload_to)
    size_bytes = models.PositiveBigIntegerField()
    n_chars = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "explorer_dataset"  # the table it had in the one-app layout
        ordering = ["-created_at"]

    def __str__(self):
        return self.name
