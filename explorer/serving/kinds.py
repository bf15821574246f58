"""The serving load-test job kind (explorer.serving.loadjob)."""
from explorer.jobs.kinds import Plan

CLIENT_MEMORY_BYTES = 256 * 2**20  # an HTTP client and its timings; the model is the serving process's


class ServingLoad:
    name = "serving-load"
    label = "Load test"
    task = "explorer.tasks.run_job"
    fit_field = "model"
    fit_what = "memory for the load test's client"
    fit_advice = "free a worker"
    out_of_memory_advice = "The load test's client ran out of memory; send fewer requests."
    default_seconds = 120.0
    resumable = False

    def plan(self, user, team, payload):
        from explorer.serving import loadjob

        spec = loadjob.validate(user, payload)
        n = len(loadjob.points(spec))
        rates = spec["rates"]
        span = f"{rates[0]:g}" if len(rates) == 1 else f"{rates[0]:g}–{rates[-1]:g}"
        return Plan(spec={"serving_load": spec}, queue="cpu", memory_bytes=CLIENT_MEMORY_BYTES, total_steps=100,
                    name=f"Load test · {spec['model']} · {span} req/s · {' vs '.join(spec['policies'])}"[:200]
                    if n else "Load test")

    def memory_bytes(self, job):
        return CLIENT_MEMORY_BYTES

    def run(self, job_id, worker_name):
        from explorer.serving import loadjob

        return loadjob.run_job(job_id, worker_name)

    def page(self, request, job):
        return "explorer/serving_load_job.html", {"settings": job.spec.get("serving_load", {}), "nav": "serving"}
