from django.apps import AppConfig


class TokenizersConfig(AppConfig):
    """Tokenizers: the tokenization lab and its training jobs."""

    name = "explorer.tokenizers"
    label = "tokenizers"
