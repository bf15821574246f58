"""The models page: a team's uploaded models, the upload form, each model's check and analysis."""
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from engine.interop.byo import SUPPORTED
from explorer.accounts.teams import is_manager
from explorer.accounts.views import team_or_404
from explorer.jobs.models import Job
from explorer.pretrained.forms import ModelUploadForm
from explorer.pretrained.models import UploadedModel
from explorer.pretrained.uploads import ModelUploadError, analysis, delete_model, save_model_upload


def _sci(x):
    return f"{x:.1e}" if x else "0"


@login_required
def models_page(request):
    team = team_or_404(request)
    form = ModelUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            model, job = save_model_upload(team, request.user, form.cleaned_data["file"], form.cleaned_data["name"])
        except ModelUploadError as exc:
            form.add_error("file", str(exc))
        else:
            if job is not None:
                messages.success(request, f"{form.cleaned_data['file'].name} is large: a worker converts and checks it "
                                          "(this job); it is listed under Models when done.")
                return redirect("job", job_id=job.pk)
            diff = model.logits_check["max_abs_diff"]
            messages.success(request, f"Uploaded {model.name}: {model.parameters:,} parameters; our logits "
                                      + (f"within {diff:.1e} of" if diff else "equal to") + " transformers' on the probe text.")
            return redirect("models")
    manager = is_manager(request.user, team)
    rows = [{"m": m, "a": analysis(m), "can_delete": manager or m.owner_id == request.user.pk,
             "diff": _sci(m.logits_check["max_abs_diff"]), "tolerance": _sci(m.logits_check["tolerance"])}
            for m in UploadedModel.objects.filter(team=team).select_related("owner")]
    importing = Job.objects.filter(team=team, kind="model-import").exclude(status=Job.Status.SUCCEEDED) \
        .order_by("-created_at")[:10]
    return render(request, "explorer/models.html", {
        "form": form, "rows": rows, "nav": "models", "families": SUPPORTED, "importing": importing,
        "upload_max_mb": settings.MODEL_UPLOAD_MAX_BYTES // 2**20,
        "sync_max_mb": settings.MODEL_UPLOAD_SYNC_MAX_BYTES // 2**20,
    })


@login_required
@require_POST
def model_delete(request, model_id):
    team = team_or_404(request)
    model = get_object_or_404(UploadedModel, pk=model_id, team=team)
    if model.owner_id != request.user.pk and not is_manager(request.user, team):
        return HttpResponseForbidden("only its uploader or a team maintainer may delete this model")
    delete_model(model)
    messages.success(request, f"Deleted {model.name}.")
    return redirect("models")
