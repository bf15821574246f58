from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Accounts: users' teams, members and roles, API tokens, rate limits."""

    name = "explorer.accounts"
    label = "accounts"
