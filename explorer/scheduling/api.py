"""The workers' endpoints: the registry, drain and undrain."""
from django.http import Http404
from ninja import Router, Status

from explorer.accounts.api import ErrorOut
from explorer.accounts.teams import user_teams

# ---------------------------------------------------------------------------- workers
workers_router = Router(tags=["workers"])


@workers_router.get("", summary="The registered workers: device, queues, current job, utilisation, heartbeat")
def list_workers(request):
    """Every worker; a current job of another team shows only as ``{"busy": true}``.
    ``can_manage``: whether you may drain them (staff, maintainers and admins of a shared team)."""
    from explorer.scheduling import workers

    return workers.workers_for(request.user)


def _set_draining(request, name, draining):
    from explorer.scheduling import workers
    from explorer.scheduling.models import Worker

    worker = Worker.objects.filter(name=name).first()
    if worker is None:
        raise Http404(f"no worker {name!r}")
    try:
        worker = workers.set_draining(request.user, worker, draining)
    except workers.NotAllowed as exc:
        return Status(403, {"detail": str(exc)})
    team_ids = set(user_teams(request.user).values_list("pk", flat=True))
    return workers.worker_to_dict(worker, team_ids)


@workers_router.post("/{name}/drain", response={200: dict, 403: ErrorOut, 404: ErrorOut},
                     summary="Drain a worker: it finishes its current job and takes no new one")
def drain_worker(request, name: str):
    return _set_draining(request, name, True)


@workers_router.post("/{name}/undrain", response={200: dict, 403: ErrorOut, 404: ErrorOut},
                     summary="Undrain a worker: it takes jobs from its queues again")
def undrain_worker(request, name: str):
    return _set_draining(request, name, False)
