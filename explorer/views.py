"""Pages. Structure is in templates/, behaviour in static/js/; data comes from services."""

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from explorer.accounts import teams as teams_service
from explorer.accounts.models import ApiToken, Membership
from explorer.accounts.teams import create_personal_team, get_job_or_404, jobs_visible_to, user_teams
from explorer.datasets.models import Dataset
from explorer.datasets.uploads import DatasetError, save_upload
from explorer.forms import ApiTokenForm, ComposeForm, DatasetUploadForm, MemberForm, SignupForm, TeamQuotaForm
from explorer.jobs import services
from explorer.jobs.submission import RateLimited
from explorer.scheduling import queue as scheduling
from explorer.tokenizers import lab
from explorer.tokenizers.models import Tokenizer
from explorer.training import analysis, checkpoints


def _safe_next(request):
    """The ``next`` URL of a form, only when it stays on this site."""
    nxt = request.POST.get("next", "")
    return nxt if url_has_allowed_host_and_scheme(nxt, {request.get_host()}, request.is_secure()) else None


def _team_or_404(request):
    if request.team is None:
        raise Http404("You belong to no team yet; ask an admin to add you to one.")
    return request.team


def home(request):
    return redirect("compose" if request.user.is_authenticated else "login")


def signup(request):
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        create_personal_team(user)
        login(request, user)
        messages.success(request, "Welcome! Your personal team is ready.")
        return redirect("compose")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def compose(request):
    team = _team_or_404(request)
    if request.method == "POST":
        form = ComposeForm(team, request.POST)
        if form.is_valid():
            try:
                job = services.create_job(request.user, team, form.payload(), name=form.cleaned_data["name"],
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
                initial = services.preset_form_values(request.GET["preset"])
            except KeyError as exc:
                messages.warning(request, exc.args[0])
        initial.update({k: v for k, v in request.GET.items() if k != "preset"})
        form = ComposeForm(team, initial=initial)
    return render(request, "explorer/compose.html", {
        "form": form,
        "options": services.composer_options(team),
        "presets": services.list_presets(),
        "preset": request.GET.get("preset", ""),
        "analysis_options": analysis.options(),
        "nav": "compose",
    })


@login_required
def compare(request):
    """Two to four architectures side by side; which ones (``?a=preset:llama-2-7b&b=...``) and the
    settings live in the URL, and static/js/compare.js fetches each one's analysis."""
    return render(request, "explorer/compare.html", {
        "presets": services.list_presets(),
        "analysis_options": analysis.options(),
        "nav": "compare",
    })


@login_required
def queue(request):
    """The team's queue and job history: filters and search in the query string, 50 a page."""
    team = _team_or_404(request)
    jobs = jobs_visible_to(request.user).filter(team=team)
    filters = {k: request.GET.get(k, "").strip() for k in ("status", "owner", "family", "q", "since", "until", "kind")}
    try:
        jobs = services.search_jobs(jobs, **filters)
    except ValueError as exc:
        messages.warning(request, str(exc))
        filters["since"] = filters["until"] = ""
        jobs = services.search_jobs(jobs_visible_to(request.user).filter(team=team), **filters)
    page = Paginator(jobs, 50).get_page(request.GET.get("page"))
    positions = services.queue_positions(list(page))
    # the rows as static/js/queue.js fills them in (a job's spec is for its own page, not a row)
    rows = [{k: v for k, v in services.job_to_dict(j, positions[j.pk]).items() if k != "spec"} for j in page]
    query = {k: v for k, v in filters.items() if v}
    return render(request, "explorer/queue.html", {
        "jobs": rows, "page": page, "status": filters["status"], "team": team, "nav": "queue",
        "statuses": ["queued", "running", "succeeded", "failed", "cancelled"],
        "filters": filters, "filter_query": urlencode(query),
        "status_query": urlencode({k: v for k, v in query.items() if k != "status"}),
        "members": team.members.order_by("username").values_list("username", flat=True),
        "families": engine_families(), "role": scheduling.role_of(request.user, team) or "",
        "searching": any(v for k, v in filters.items() if k != "status"),
    })


def engine_families():
    return services.composer_options_choices().get("family", [])


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
        applies = services.relevant_config(spec)
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


@login_required
def job_detail(request, job_id):
    job = get_job_or_404(request.user, job_id)
    data = services.job_to_dict(job, services.queue_positions([job])[job.pk])
    if job.kind == "tokenizer":  # a tokenization-lab job: progress and outcome, no loss curves
        return render(request, "explorer/tokenizer_job.html", {
            "job": job, "job_data": data, "settings": job.spec.get("tokenizer", {}), "nav": "tokenizers",
            "tokenizer": Tokenizer.objects.filter(job=job).first(),
        })
    if job.kind == "inference":  # prompts through a model: completions, measurements, quantisation
        return render(request, "explorer/inference_job.html", {
            "job": job, "job_data": data, "settings": job.spec.get("inference", {}), "nav": "inference",
        })
    return render(request, "explorer/job.html", {
        "job": job, "job_data": data, "config": services.relevant_config(job.spec), "nav": "queue",
        "clone_query": _clone_query(job), "checkpoints": checkpoints.checkpoints(job),
        "children": jobs_visible_to(request.user).filter(parent=job).order_by("created_at"),
    })


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


@login_required
@require_POST
def job_cancel(request, job_id):
    job = get_job_or_404(request.user, job_id)
    try:
        scheduling.check_can_act(request.user, job, "cancel")
    except scheduling.NotAllowed as exc:
        messages.warning(request, str(exc))
        return redirect(_safe_next(request) or reverse("job", args=[job.pk]))
    if services.cancel_job(job):
        messages.info(request, f"Cancelling {job.display_name}.")
    else:
        messages.warning(request, f"{job.display_name} has already ended.")
    return redirect(_safe_next(request) or reverse("job", args=[job.pk]))


@login_required
def datasets(request):
    team = _team_or_404(request)
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


@login_required
def tokenizers(request):
    """The tokenization lab: train, import and compare tokenizers; static/js/tokenlab.js does the work
    through /api/v1/tokenize and /api/v1/tokenizers."""
    team = _team_or_404(request)
    return render(request, "explorer/tokenizers.html", {
        "lab_options": lab.options(),
        "datasets": [{"id": d.pk, "name": d.name, "size_bytes": d.size_bytes} for d in Dataset.objects.filter(team=team)],
        "team": team, "nav": "tokenizers", "upload_max_mb": settings.UPLOAD_MAX_BYTES // 2**20,
    })


@login_required
def inference(request):
    """The inference form: a model (a team job's checkpoint or MiniLM), prompts, sampling settings,
    quantisation; static/js/inference.js posts it to /api/v1/inference and opens the job's page.
    ``?job=<id>`` preselects that job."""
    from explorer.inference import jobs as inference_jobs

    team = _team_or_404(request)
    return render(request, "explorer/inference.html", {
        "options": inference_jobs.options(team), "selected": request.GET.get("job", ""), "nav": "inference",
    })


@login_required
def account(request):
    current = request.team.pk if request.team else None
    form = ApiTokenForm(request.user, request.POST or None, initial={"team": current})
    new_token = None
    if request.method == "POST" and form.is_valid():
        _, new_token = ApiToken.issue(request.user, form.cleaned_data["name"], team=form.cleaned_data["team"])
        form = ApiTokenForm(request.user, initial={"team": current})
    return render(request, "explorer/account.html", {
        "form": form, "new_token": new_token, "nav": "account",
        "tokens": ApiToken.objects.filter(user=request.user, revoked_at=None).select_related("team"),
        "teams": user_teams(request.user),
    })


@login_required
@require_POST
def token_revoke(request, token_id):
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user, revoked_at=None)
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    messages.info(request, f"Token “{token.name}” revoked.")
    return redirect("account")


@login_required
def team(request):
    """The current team: its members and roles, and its quotas; admins change them."""
    team = _team_or_404(request)
    admin = scheduling.is_admin(request.user, team)
    quota_form = TeamQuotaForm(instance=team)
    member_form = MemberForm()
    if request.method == "POST":
        if not admin:
            messages.warning(request, f"Only admins of {team.name} can change its members and quotas.")
            return redirect("team")
        action = request.POST.get("action")
        if action == "quotas":
            quota_form = TeamQuotaForm(request.POST, instance=team)
            if quota_form.is_valid():
                quota_form.save()
                messages.success(request, "Quotas saved.")
                return redirect("team")
        elif action == "add":
            member_form = MemberForm(request.POST)
            if member_form.is_valid():
                error = teams_service.add_member(team, member_form.cleaned_data["username"], member_form.cleaned_data["role"])
                if error:
                    member_form.add_error("username", error)
                else:
                    messages.success(request, f"{member_form.cleaned_data['username']} added.")
                    return redirect("team")
        elif action in ("role", "remove"):
            error = teams_service.change_member(team, request.user, request.POST.get("user"), action,
                                                request.POST.get("role"))
            if error:
                messages.warning(request, error)
            else:
                messages.success(request, "Membership updated.")
            return redirect("team")
    memberships = Membership.objects.filter(team=team).select_related("user").order_by("user__username")
    return render(request, "explorer/team.html", {
        "team": team, "admin": admin, "memberships": memberships, "quota_form": quota_form,
        "member_form": member_form, "roles": Membership.Role.values, "nav": "team",
        "role": scheduling.role_of(request.user, team),
    })


@login_required
@require_POST
def switch_team(request):
    team = user_teams(request.user).filter(pk=request.POST.get("team")).first()
    if team is None:
        raise Http404("No such team")
    request.session["team_id"] = team.pk
    return redirect(_safe_next(request) or reverse("queue"))




@login_required
def workers(request):
    """The workers, live (static/js/workers.js polls /api/v1/workers)."""
    from explorer.scheduling import workers as registry

    return render(request, "explorer/workers.html", {"initial": registry.workers_for(request.user), "nav": "workers"})
