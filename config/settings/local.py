"""Local use (``make run``, ``manage.py``): the base settings, all read from the environment
(README "Configuration"): SQLite under var/, a random secret key kept there, DJANGO_DEBUG off
unless set."""
from config.settings.base import *  # noqa: F401,F403
