"""The REST API's root under /api/v1/ (django-ninja; OpenAPI schema at /api/v1/openapi.json, docs
at /api/v1/docs): authentication, the error shapes every endpoint shares, and one router per app."""
from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import ValidationError
from ninja.security import django_auth

from explorer.accounts import api as accounts_api
from explorer.datasets import api as datasets_api
from explorer.inference import api as inference_api
from explorer.jobs import api as jobs_api
from explorer.jobs import services
from explorer.jobs.submission import RateLimited
from explorer.pretrained import api as pretrained_api
from explorer.scheduling import api as scheduling_api
from explorer.serving import api as serving_api
from explorer.tokenizers import api as tokenizers_api
from explorer.training import api as training_api


class ExplorerAPI(NinjaAPI):
    def get_openapi_operation_id(self, operation):
        # The ids the schema had when every endpoint lived in one module (explorer/api.py), kept so
        # that clients generated from it keep their method names; view names are unique.
        return f"explorer_api_{operation.view_func.__name__}"


api = ExplorerAPI(
    title="LLM Architecture Explorer API",
    version="1",
    auth=[accounts_api.TokenAuth(), django_auth],
    urls_namespace="api",
    docs_url="/docs",
)


@api.exception_handler(ValidationError)
def validation_error(request, exc):
    errors = {}
    for err in exc.errors:
        loc = [str(p) for p in err.get("loc", []) if p not in ("body", "query", "path", "form", "payload")]
        errors[".".join(loc) or "request"] = err.get("msg", "invalid")
    return api.create_response(request, {"detail": "Invalid request", "errors": errors}, status=400)


@api.exception_handler(services.SpecError)
def spec_error(request, exc):
    return api.create_response(request, {"detail": "Invalid job", "errors": exc.errors}, status=400)


@api.exception_handler(RateLimited)
def rate_limited(request, exc):
    return exc.refusal.api_response()


@api.exception_handler(Http404)
def not_found(request, exc):
    return api.create_response(request, {"detail": str(exc) or "Not found"}, status=404)


api.add_router("/", accounts_api.account)
api.add_router("/jobs", jobs_api.jobs)
api.add_router("/jobs", training_api.job_routes)
api.add_router("/jobs", inference_api.job_routes)
api.add_router("/", training_api.analysis)
api.add_router("/", training_api.presets)
api.add_router("/", training_api.composer)
api.add_router("/", training_api.finetune)
api.add_router("/datasets", datasets_api.datasets)
api.add_router("/models", pretrained_api.models_router)
api.add_router("/", tokenizers_api.tokenizer_lab)
api.add_router("/", inference_api.inference)
api.add_router("/workers", scheduling_api.workers_router)
api.add_router("/", serving_api.serving)
api.add_router("/events", jobs_api.events_router)
