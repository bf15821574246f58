"""The training job kind: a model trained from a spec (``engine.train``)."""
import engine
from explorer.jobs.kinds import Plan
from explorer.training import jobs as training_jobs


class Training:
    name = "train"
    label = "Training"
    task = "explorer.tasks.run_job"
    fit_field = "train.batch_size"
    fit_what = "training memory"
    fit_advice = "lower batch_size, block_size, n_embd or n_layer"
    out_of_memory_advice = "Lower batch_size or block_size, or turn on gradient accumulation, and submit again."
    default_seconds = None  # from the queue's tokens/s (explorer.jobs.queue)
    resumable = True  # a lost worker's job resumes from its last checkpoint

    def plan(self, user, team, payload):
        from explorer.training.checkpoints import parent_of

        spec, dataset, analysis = training_jobs.validate_spec(team, payload, fit=False)
        parent_id, parent_step = parent_of(spec.train.init_from) or (None, None)
        return Plan(spec=spec.to_dict(), queue=training_jobs.queue_for(spec), memory_bytes=analysis["memory"]["train_total"],
                    params=analysis["params"]["total"], total_steps=spec.train.steps,
                    fields={"dataset": dataset, "parent_id": parent_id, "parent_step": parent_step})

    def memory_bytes(self, job):
        spec = engine.parse_spec(job.spec)
        return engine.analyze(spec.model, batch_size=spec.train.batch_size)["memory"]["train_total"]

    def run(self, job_id, worker_name):
        return training_jobs.run_job(job_id, worker_name)

    def requeue(self, job, reason):
        from explorer.training.checkpoints import RetryRefused, retry_job

        try:
            return True, retry_job(job, reason=reason, automatic=True)
        except RetryRefused:
            return False, None

    def page(self, request, job):
        from explorer.training import views

        return views.page(request, job)
