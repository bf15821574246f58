"""The Celery app. Workers: ``celery -A config.celery_app worker -Q cpu`` (or ``-Q gpu`` on a GPU host)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("explorer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["explorer.jobs"])
