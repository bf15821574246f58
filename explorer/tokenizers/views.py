"""The tokenization lab's page, and a tokenizer-training job's page."""
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from explorer.accounts.views import team_or_404
from explorer.datasets.models import Dataset
from explorer.tokenizers import lab
from explorer.tokenizers.models import Tokenizer


@login_required
def tokenizers(request):
    """The tokenization lab: train, import and compare tokenizers; static/js/tokenlab.js does the work
    through /api/v1/tokenize and /api/v1/tokenizers."""
    team = team_or_404(request)
    return render(request, "explorer/tokenizers.html", {
        "lab_options": lab.options(),
        "datasets": [{"id": d.pk, "name": d.name, "size_bytes": d.size_bytes} for d in Dataset.objects.filter(team=team)],
        "team": team, "nav": "tokenizers", "upload_max_mb": settings.UPLOAD_MAX_BYTES // 2**20,
    })


def page(request, job):
    """A tokenization-lab job's page: progress and outcome, no loss curves."""
    return "explorer/tokenizer_job.html", {
        "settings": job.spec.get("tokenizer", {}), "nav": "tokenizers",
        "tokenizer": Tokenizer.objects.filter(job=job).first(),
    }
