from django.apps import AppConfig


class PretrainedConfig(AppConfig):
    """A team's own pretrained models: uploaded GGUF files and transformers directories, checked
    and converted into the engine's decoder, usable by that team's inference jobs."""

    name = "explorer.pretrained"
    label = "pretrained"

    def ready(self):
        from explorer.jobs import kinds
        from explorer.pretrained.kinds import ModelImport

        kinds.register(ModelImport())
