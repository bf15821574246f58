"""Celery tasks: thin wrappers that load ids and call one service function."""
from celery import shared_task
from celery.signals import worker_ready

from explorer import services, tokenizer_jobs


@shared_task(name="explorer.tasks.run_job", acks_late=True, reject_on_worker_lost=True)
def run_job(job_id):
    return services.run_job(job_id, worker_name=run_job.request.hostname or "worker")


@shared_task(name="explorer.tasks.train_tokenizer", acks_late=True, reject_on_worker_lost=True)
def train_tokenizer(job_id):
    return tokenizer_jobs.run_tokenizer_job(job_id, worker_name=train_tokenizer.request.hostname or "worker")


@shared_task(name="explorer.tasks.reap_stale_jobs")
def reap_stale_jobs():
    return services.reap_stale_jobs()


@worker_ready.connect
def on_worker_ready(sender, **kwargs):
    services.fail_orphaned_jobs(sender.hostname)
    services.reap_stale_jobs()
