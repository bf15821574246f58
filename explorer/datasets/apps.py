from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    """Datasets: a team's uploaded text files."""

    name = "explorer.datasets"
    label = "datasets"
