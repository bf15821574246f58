"""The inference form, and an inference job's page."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from explorer.accounts.views import team_or_404


@login_required
def inference(request):
    """The inference form: a model (a team job's checkpoint or MiniLM), prompts, sampling settings,
    quantisation; static/js/inference.js posts it to /api/v1/inference and opens the job's page.
    ``?job=<id>`` preselects that job, ``?model=upload-<id>`` one of the team's uploaded models."""
    from explorer.inference import jobs as inference_jobs

    team = team_or_404(request)
    options = inference_jobs.options(team)
    return render(request, "explorer/inference.html", {
        "options": options, "selected": request.GET.get("job", ""), "nav": "inference",
        "selected_model": request.GET.get("model", ""), "has_uploaded": any(p.get("uploaded") for p in options["pretrained"]),
    })


def page(request, job):
    """Prompts through a model: completions, measurements, quantisation."""
    return "explorer/inference_job.html", {"settings": job.spec.get("inference", {}), "nav": "inference"}
