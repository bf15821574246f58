from django.apps import AppConfig


class ExplorerConfig(AppConfig):
    """The app that was the whole project before the split into one app per domain: it keeps the
    migration history of those years (0001-0006 made today's tables; 0007 hands the models to
    the domain apps, which keep the tables) and the project's management commands."""

    name = "explorer"
    label = "explorer"
