"""A deployment (Dockerfile, docker-compose.yml): the base settings with production mode on, so
the app refuses to start without DJANGO_SECRET_KEY and sends cookies over HTTPS only (unless
EXPLORER_SECURE_COOKIES=0)."""
import os

os.environ.setdefault("EXPLORER_PRODUCTION", "1")

from config.settings.base import *  # noqa: E402,F401,F403
