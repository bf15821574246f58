"""LLM Architecture Explorer: Django project wiring and the app (models, views, API, consumers,
tasks, services). The model maths lives in the framework-free ``engine`` package."""
from .celery import app as celery_app

__all__ = ["celery_app"]
