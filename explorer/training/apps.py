from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Training: the composer, compare, runs, analysis, checkpoints, attention detail, fine-tuning."""

    name = "explorer.training"
    label = "training"

    def ready(self):
        from explorer.jobs import kinds
        from explorer.training.finetune import Finetune
        from explorer.training.kinds import Training

        kinds.register(Training())
        kinds.register(Finetune())
