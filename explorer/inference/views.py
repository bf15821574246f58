"""The inference form, an inference job's page, the chat page and a chat turn's job page."""
from django.contrib.auth.decorators import login_required
from django.http import Http404
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


@login_required
def chat(request, conversation_id=None):
    """The chat page: the user's conversations, one of them open (``/chat/<id>/``; another user's
    or none is a 404), the sampling settings and the composer; static/js/chat.js sends the messages
    to /api/v1/chat/messages and streams each answer's tokens from its job's websocket. Without the
    model's files the page says how to install them."""
    from explorer.inference import chat as chat_service

    team = team_or_404(request)
    conversations = list(chat_service.conversations_of(request.user)[:200])
    current = None
    if conversation_id is not None:
        current = chat_service.conversations_of(request.user).filter(pk=conversation_id).first()
        if current is None:
            raise Http404("No such conversation")
    options = chat_service.options()
    return render(request, "explorer/chat.html", {
        "nav": "chat", "team": team, "options": options, "conversations": conversations, "current": current,
        "chat_data": {"options": options, "team": team.slug,
                      "conversation": chat_service.conversation_to_dict(current) if current else None},
    })


def chat_job_page(request, job):
    """A chat turn's job page: what it wrote, and (for its owner, the only one who sees it) a link
    to the conversation."""
    from explorer.inference.models import Message

    message = Message.objects.filter(job=job).select_related("conversation").first()
    return "explorer/chat_job.html", {"message": message, "settings": job.spec.get("chat", {}), "nav": "chat"}


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
