from django.apps import AppConfig


class ServingConfig(AppConfig):
    """Serving: the OpenAI-compatible endpoint, the serving processes, the Serving page."""

    name = "explorer.serving"
    label = "serving"
