"""The Celery app. Workers: ``celery -A explorer worker -Q cpu`` (or ``-Q gpu`` on a GPU host)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "explorer.settings")

app = Celery("explorer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["explorer"])
