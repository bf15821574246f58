"""Celery tasks: thin wrappers that load ids and call one service function."""
from celery import shared_task
from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown

from explorer.jobs import lifecycle
from explorer.scheduling import workers


# A message names the job it was sent for, but the best queued job of that job's route runs
# (priorities, fair share, quotas; ``explorer.jobs.queue``): maybe another one, of any kind. The
# three names stay so each kind keeps its task (and messages already in the broker still run).
@shared_task(name="explorer.tasks.run_job", acks_late=True, reject_on_worker_lost=True)
def run_job(job_id):
    return lifecycle.run_next_job(job_id, worker_name=run_job.request.hostname or "worker")


@shared_task(name="explorer.tasks.train_tokenizer", acks_late=True, reject_on_worker_lost=True)
def train_tokenizer(job_id):
    return lifecycle.run_next_job(job_id, worker_name=train_tokenizer.request.hostname or "worker")


@shared_task(name="explorer.tasks.run_inference", acks_late=True, reject_on_worker_lost=True)
def run_inference(job_id):
    return lifecycle.run_next_job(job_id, worker_name=run_inference.request.hostname or "worker")


@shared_task(name="explorer.tasks.reap_stale_jobs")
def reap_stale_jobs():
    return lifecycle.reap_stale_jobs()


@worker_ready.connect
def on_worker_ready(sender, **kwargs):
    workers.register(sender.hostname, current_job=lifecycle.running_job_of)
    lifecycle.fail_orphaned_jobs(sender.hostname)
    lifecycle.reap_stale_jobs()


@celeryd_after_setup.connect
def on_worker_setup(sender, instance, **kwargs):
    workers.setup_queues(instance)  # its memory tiers, before it starts consuming


@worker_shutdown.connect
def on_worker_shutdown(sender, **kwargs):
    workers.unregister()
