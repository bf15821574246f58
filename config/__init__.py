"""The Django project: settings (base / local / production / test), URLs, the ASGI and WSGI entry
points, the Celery app and the API root. The apps live in the ``explorer`` package; the model
maths in the framework-free ``engine`` package."""
from .celery_app import app as celery_app

__all__ = ["celery_app"]
