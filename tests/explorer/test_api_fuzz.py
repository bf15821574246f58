"""The OpenAPI schema fuzzed with schemathesis: every operation, with generated bodies and
parameters (bounded examples), called as a logged-in user with an API token — no 5xx, ever.

Operations that queue work for a worker (submitting a training job, training a tokenizer on a
large corpus) are left out: they would leave tasks in the broker for later tests' workers; their
input validation is covered by their own tests."""
import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from explorer.accounts.models import ApiToken

pytestmark = pytest.mark.django_db

QUEUES_WORK = {("POST", "/api/v1/jobs"), ("POST", "/api/v1/tokenizers"), ("POST", "/api/v1/inference")}


schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application()).exclude(
    func=lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in QUEUES_WORK)


@pytest.fixture(autouse=True)
def keep_the_test_connection():
    # the WSGI handler closes the database connection after each request, as in production;
    # the test's transaction must survive it (Django's test Client does the same)
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_operation_answers_with_a_server_error(case, alice):
    _, token = ApiToken.issue(alice[0], "fuzz")
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error])
