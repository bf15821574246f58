from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Training: the composer, compare, runs, analysis, checkpoints, attention detail."""

    name = "explorer.training"
    label = "training"

    def ready(self):
        from explorer.jobs import kinds
        from explorer.training.kinds import Training

        kinds.register(Training())
