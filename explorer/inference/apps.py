from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """Inference: jobs that run prompts through a checkpoint."""

    name = "explorer.inference"
    label = "inference"
