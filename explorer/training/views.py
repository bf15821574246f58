"""Training's pages: the composer, the architecture comparison, runs overlaid, and a training job's
page (``page``, the training kind's) with its retry."""
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from explorer.accounts.views import team_or_404
from explorer.jobs import queue as scheduling
from explorer.jobs import services
from explorer.jobs.access import get_job_or_404, jobs_visible_to
from explorer.jobs.submission import RateLimited
from explorer.tokenizers.models import Tokenizer
from explorer.training import analysis, checkpoints
from explorer.training import jobs as training_jobs
from explorer.training.forms import ComposeForm


@login_required
def compose(request):
    team = team_or_404(request)
    if request.method == "POST":
        form = ComposeForm(team, request.POST)
        if form.is_valid():
            try:
                job = training_jobs.create_job(request.user, team, form.payload(), name=form.cleaned_data["name"],
                                          priority=form.cleaned_data.get("priority") or "normal")
            except RateLimited as exc:
                form.add_error(None, exc.refusal.message)
            except services.SpecError as exc:  # a quota, or a priority the user's role does not allow
                for key, message in exc.errors.items():
                    form.add_error("priority" if key == "priority" else None, message)
            else:
                messages.success(request, f"{job.display_name} queued.")
                return redirect("job", job_id=job.pk)
    else:
        # Every experiment is a shareable link: the query string pre-fills the form; ?preset=
        # loads a real model's architecture first.
        initial = {}
        if request.GET.get("preset"):
            try:
                initial = training_jobs.preset_form_values(request.GET["preset"])
            except KeyError as exc:
                messages.warning(request, exc.args[0])
        initial.update({k: v for k, v in request.GET.items() if k != "preset"})
        form = ComposeForm(team, initial=initial)
    return render(request, "explorer/compose.html", {
        "form": form,
        "options": training_jobs.composer_options(team),
        "presets": training_jobs.list_presets(),
        "preset": request.GET.get("preset", ""),
        "analysis_options": analysis.options(),
        "nav": "compose",
    })


@login_required
def compare(request):
    """Two to four architectures side by side; which ones (``?a=preset:llama-2-7b&b=...``) and the
    settings live in the URL, and static/js/compare.js fetches each one's analysis."""
    return render(request, "explorer/compare.html", {
        "presets": training_jobs.list_presets(),
        "analysis_options": analysis.options(),
        "nav": "compare",
    })


RUNS_MIN, RUNS_MAX = 2, 8


@login_required
def runs(request):
    """Training runs overlaid (``?jobs=3,5,9``): static/js/runs.js fetches each job's events.
    Only jobs of the user's teams reach the page; any other id is a "not found" slot and
    nothing more, whether it exists in another team or not."""
    ids, note = [], ""
    for part in request.GET.get("jobs", "").split(","):
        part = part.strip()
        if part.isdigit() and int(part) not in ids:
            ids.append(int(part))
    if len(ids) > RUNS_MAX:
        note = f"At most {RUNS_MAX} runs can be compared; showing the first {RUNS_MAX}."
        ids = ids[:RUNS_MAX]
    elif len(ids) < RUNS_MIN:
        note = f"Pick {RUNS_MIN} to {RUNS_MAX} jobs to compare: tick them on the queue page, or list their ids in the address (?jobs=3,5)."
    found = {j.pk: j for j in jobs_visible_to(request.user).filter(pk__in=ids, kind="train")}
    slots = []
    for pk in ids:
        job = found.get(pk)
        if job is None:
            slots.append({"id": pk, "found": False})
            continue
        spec = services.public_spec(job.spec)
        applies = training_jobs.relevant_config(spec)
        slots.append({
            "id": pk, "found": True, "name": job.display_name, "status": job.status, "url": f"/jobs/{pk}/",
            "step": job.step, "total_steps": job.total_steps, "last_seq": job.last_seq,
            "config": {f"{section}.{key}": value for section, values in spec.items() for key, value in values.items()},
            "applies": [f"{section}.{key}" for section, values in applies.items() for key in values],
        })
    return render(request, "explorer/runs.html", {
        "slots": slots, "note": note, "n_found": len(found), "nav": "queue",
        "runs_data": {"jobs": slots, "min": RUNS_MIN, "max": RUNS_MAX},
    })


def page(request, job):
    """A training job's page: its template and context (``job`` and ``job_data`` are added)."""
    return "explorer/job.html", {
        "config": training_jobs.relevant_config(job.spec), "nav": "queue",
        "clone_query": _clone_query(job), "checkpoints": checkpoints.checkpoints(job),
        "children": jobs_visible_to(request.user).filter(parent=job).order_by("created_at"),
    }


def _clone_query(job):
    """The composer's query string for a job's settings: files by their ids, never by path."""
    data = job.spec.get("data", {})
    query = {f"{section}.{key}": ("true" if value is True else "" if value is False else value)
             for section, values in services.public_spec(job.spec).items() for key, value in values.items()
             if key != "vocab_size" and value is not None}
    if job.dataset_id:
        query["data.dataset"] = job.dataset_id
    if job.parent_id:
        query["train.init_from_job"] = job.parent_id
    if data.get("tokenizer") == "file":
        ids = [t.pk for t in Tokenizer.objects.filter(team=job.team).exclude(file="")
               if t.file.path == data.get("tokenizer_file")]
        if ids:
            query["data.tokenizer_id"] = ids[0]
    return urlencode(query)


@login_required
@require_POST
def job_retry(request, job_id):
    job = get_job_or_404(request.user, job_id)
    try:
        scheduling.check_can_act(request.user, job, "retry")
        step = checkpoints.retry_job(job, reason=f"retried by {request.user.get_username()}")
    except (checkpoints.RetryRefused, scheduling.NotAllowed) as exc:
        messages.warning(request, str(exc))
    else:
        messages.info(request, f"{job.display_name} queued again; it resumes from step {step}." if step
                      else f"{job.display_name} queued again; no checkpoint, so it starts over.")
    return redirect("job", job_id=job.pk)


# ---------------------------------------------------------------------------- fine-tuning
@login_required
def finetune(request):
    """The fine-tuning form: static/js/finetune.js posts it to /api/v1/finetune and opens the job."""
    from explorer.training import finetune as ft

    team = team_or_404(request)
    options = ft.options(team)
    return render(request, "explorer/finetune.html", {
        "options": options, "default_prompts": "\n".join(options["defaults"]["finetune"]["prompts"]), "nav": "finetune",
    })


def finetune_page(request, job):
    """A fine-tuning job's page: progress, the loss curve, the answers before and after, its files."""
    from explorer.training import finetune as ft

    spec = services.public_spec(job.spec)
    found = ft.saved(job)
    return "explorer/finetune_job.html", {
        "settings": spec.get("finetune", {}), "lora": spec.get("lora", {}), "data": spec.get("data", {}),
        "train": spec.get("train", {}), "saved": found, "exports": ft.EXPORTS, "nav": "finetune",
        "total_params": ft.trainable_parameters(ft.spec_of(job.spec))[1],
    }
