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


@login_required
def attention(request):
    """The attention form: a pretrained decoder and a text (or a chat turn); static/js/attention.js
    posts it to /api/v1/attention and opens the job's page. ``?text=`` fills the text in and
    ``?chat=1`` ticks the chat template (a link from a chat page's turn)."""
    from explorer.inference import attention as attention_jobs

    team_or_404(request)
    return render(request, "explorer/attention.html", {
        "options": attention_jobs.options(), "text": request.GET.get("text", ""),
        "chat": request.GET.get("chat") in ("1", "true", "on"), "nav": "attention",
    })


def attention_page(request, job):
    """Every layer × head of a pretrained model on one text: the grid, the statistics, one head's
    full map (zoomable) and its head view."""
    settings = job.spec.get("attention", {})
    name = settings.get("source", {}).get("name", "")
    return "explorer/attention_job.html", {"settings": settings, "model_short": name.split(" (")[0], "nav": "attention"}
