from django.apps import AppConfig


class JobsConfig(AppConfig):
    """Jobs: the Job and its events, the job kinds, submission, the run lifecycle, the recorder and publisher, websockets."""

    name = "explorer.jobs"
    label = "jobs"
