"""The model-import job kind: an upload too large to check and convert within the request
(``explorer.pretrained.uploads`` decides), converted by a worker with progress."""
from explorer.jobs.kinds import Plan
from explorer.jobs.services import SpecError

# transformers' float32 copy, ours, and the saved copy's buffers while it is written
WEIGHT_COPIES = 3


class ModelImport:
    name = "model-import"
    label = "Model import"
    task = "explorer.tasks.run_job"
    fit_field = "file"
    fit_what = "conversion memory"
    fit_advice = "upload a smaller model"
    out_of_memory_advice = "The model is too large for this worker to convert; upload a smaller one."
    default_seconds = 60.0
    resumable = False

    def plan(self, user, team, prepared):
        """``prepared``: what ``uploads.save_model_upload`` checked in the request (the staging
        directory of ``team`` holding the file, its format and family, the weights' size)."""
        from explorer.pretrained import uploads

        try:
            uploads.staging_dir(team, prepared["staging"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError({"file": f"no staged upload to import ({exc})"}) from None
        return Plan(spec={"model_import": prepared}, queue="cpu", memory_bytes=self._memory(prepared),
                    params=int(prepared.get("parameters") or 0), total_steps=100,
                    name=f"Import {prepared.get('name') or prepared.get('file_name')}")

    @staticmethod
    def _memory(prepared):
        return WEIGHT_COPIES * 4 * int(prepared.get("parameters") or 0)

    def memory_bytes(self, job):
        return self._memory(job.spec["model_import"])

    def run(self, job_id, worker_name):
        from explorer.pretrained import uploads

        return uploads.run_import_job(job_id, worker_name)

    def page(self, request, job):
        from explorer.pretrained.models import UploadedModel

        return "explorer/model_import_job.html", {
            "settings": job.spec.get("model_import", {}), "nav": "models",
            "model": UploadedModel.objects.filter(import_job=job).first(),
        }
