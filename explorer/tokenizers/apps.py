from django.apps import AppConfig


class TokenizersConfig(AppConfig):
    """Tokenizers: the tokenization lab and its training jobs."""

    name = "explorer.tokenizers"
    label = "tokenizers"

    def ready(self):
        from explorer.jobs import kinds
        from explorer.tokenizers.kinds import TokenizerTraining

        kinds.register(TokenizerTraining())
