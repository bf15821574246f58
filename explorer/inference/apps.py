from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """Inference: jobs that run prompts through a checkpoint or a pretrained model."""

    name = "explorer.inference"
    label = "inference"

    def ready(self):
        from explorer.inference.kinds import Attention, Inference
        from explorer.jobs import kinds

        kinds.register(Inference())
        kinds.register(Attention())
