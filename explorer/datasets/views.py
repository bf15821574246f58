"""The datasets page: a team's uploaded text files."""
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from explorer.accounts.views import team_or_404
from explorer.datasets.forms import DatasetUploadForm
from explorer.datasets.models import Dataset
from explorer.datasets.uploads import DatasetError, save_upload


@login_required
def datasets(request):
    team = team_or_404(request)
    form = DatasetUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            dataset = save_upload(team, request.user, form.cleaned_data["file"], form.cleaned_data["name"])
        except DatasetError as exc:
            form.add_error("file", str(exc))
        else:
            messages.success(request, f"Uploaded {dataset.name} ({dataset.n_chars:,} characters).")
            return redirect("datasets")
    return render(request, "explorer/datasets.html", {
        "form": form, "datasets": Dataset.objects.filter(team=team), "nav": "datasets",
        "upload_max_mb": settings.UPLOAD_MAX_BYTES // 2**20,
    })
