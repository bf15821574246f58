from django.apps import AppConfig


class ServingConfig(AppConfig):
    """Serving: the OpenAI-compatible endpoint, the serving processes, the Serving page and its
    load-test job kind."""

    name = "explorer.serving"
    label = "serving"

    def ready(self):
        from explorer.jobs import kinds
        from explorer.serving.kinds import ServingLoad

        kinds.register(ServingLoad())
