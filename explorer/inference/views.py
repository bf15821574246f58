"""The inference form, and an inference job's page."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from explorer.accounts.views import team_or_404


@login_required
def inference(request):
    """The inference form: a model (a team job's checkpoint or MiniLM), prompts, sampling settings,
    quantisation; static/js/inference.js posts it to /api/v1/inference and opens the job's page.
    ``?job=<id>`` preselects that job."""
    from explorer.inference import jobs as inference_jobs

    team = team_or_404(request)
    return render(request, "explorer/inference.html", {
        "options": inference_jobs.options(team), "selected": request.GET.get("job", ""), "nav": "inference",
    })


def page(request, job):
    """Prompts through a model: completions, measurements, quantisation."""
    return "explorer/inference_job.html", {"settings": job.spec.get("inference", {}), "nav": "inference"}
