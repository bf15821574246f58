from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """Inference: jobs that run prompts through a checkpoint or a pretrained model, and chats with a
    pretrained chat model (conversations, one job per answer)."""

    name = "explorer.inference"
    label = "inference"

    def ready(self):
        from explorer.inference.kinds import Attention, Chat, Inference
        from explorer.jobs import kinds

        kinds.register(Inference())
        kinds.register(Chat())
        kinds.register(Attention())
