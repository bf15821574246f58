"""Who may reach what: every page, API operation and websocket route, for an anonymous user, a
user of another team (session and API token) and a member of the team without the needed role.

The routes are discovered (the URL resolver, the API's OpenAPI schema, the websocket routing), so
a new one is covered as soon as it exists. The tables say only what discovery cannot know: which
object a path parameter names, a page's method and data, and the role a change needs. A route
the tables cannot place fails ``test_every_route_is_classified`` with what to add.

The oracle: anonymous pages redirect to the log-in page, anonymous API calls are 401; another
team's objects are a 404 exactly like an id that does not exist (never a 403: no existence leak);
lists and pages show another team none of its objects (every object of team A is named "zebra...",
and no response to an outsider may contain that word); a member whose role is too low is refused
(403, or a page's redirect with a warning) and nothing changes; the role that is enough succeeds.
"""
import asyncio
import json
import re
from dataclasses import dataclass, field

import pytest
from channels.testing.websocket import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLResolver, get_resolver, reverse

from config.api import api
from explorer.accounts.models import ApiToken, Membership, Team
from explorer.datasets.models import Dataset
from explorer.datasets.uploads import save_upload
from explorer.inference.models import Conversation
from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.jobs.routing import websocket_urlpatterns
from explorer.pretrained.models import UploadedModel
from explorer.scheduling.models import Worker
from explorer.tokenizers import lab
from explorer.tokenizers.models import Tokenizer
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db

MARKER = b"zebra"  # in the name of every object and user of team A
MISSING = 987_654_321  # an id no object has

# ---------------------------------------------------------------------------- the tables
# Path parameters, by name or, where a name is ambiguous, by "prefix/{name}": the value (a World
# attribute) and whether it names an object of a team (then another team gets a 404, the same as
# for MISSING). Workers are shared by every team: not a team's object.
PATH_PARAMS = {
    "job_id": ("job", True),
    "tokenizer_id": ("tokenizer", True),
    "token_id": ("token", True),
    "team_id": ("team", True),
    "conversation_id": ("conversation", True),
    "model_id": ("model", True),  # a team's uploaded model
    "finetune/{what}": ("download", False),  # which download of a fine-tuning job  # a user's own: also a 404 to their teammates (test_chat.py)
    "step": ("step", False),
    "presets/{name}": ("preset", False),
    "workers/{name}": ("worker", False),
}


def param_spec(route, name):
    for key, spec in PATH_PARAMS.items():
        if key == name or ("/" in key and key.endswith(f"{{{name}}}") and key in route):
            return spec
    return None

# Required request-body fields that need a meaningful value (others get one from their JSON type).
BODY_EXAMPLES = {"text": "hello world", "steps": [1], "priority": "normal"}
# Request bodies that keep a call cheap (training a 1 MB corpus in a request is not what is tested here).
BODY_OVERRIDES = {
    ("POST", "/api/v1/tokenizers"): {"kind": "char", "corpus": "text", "text": "hello world"},
    ("POST", "/api/v1/tokenize"): {"tokenizers": ["byte"], "text": "hello world"},
}

# Roles a change needs ("member": any member of the team; "owner-or-maintainer": a member on their
# own job, a maintainer or admin on any job of the team). Every API operation that is not a GET must
# be here; the job a role test acts on is the team admin's ("job") or an ended one ("ended_job").
# The issue: "Members submit and cancel their own jobs; maintainers reorder, cancel and reprioritise
# any job of the team; admins manage members and quotas."
API_ROLES = {
    ("POST", "/api/v1/jobs"): ("member", None),
    ("POST", "/api/v1/jobs/{job_id}/cancel"): ("owner-or-maintainer", "job"),
    ("POST", "/api/v1/jobs/{job_id}/retry"): ("owner-or-maintainer", "ended_job"),
    ("POST", "/api/v1/jobs/{job_id}/priority"): ("owner-or-maintainer", "job"),
    ("POST", "/api/v1/jobs/{job_id}/move-to-top"): ("maintainer", "job"),
    ("POST", "/api/v1/analyze"): ("member", None),  # computations: nothing is saved
    ("POST", "/api/v1/import/hf-config"): ("member", None),
    ("POST", "/api/v1/estimate"): ("member", None),
    ("POST", "/api/v1/tokenize"): ("member", None),
    ("POST", "/api/v1/datasets"): ("member", None),
    ("POST", "/api/v1/tokenizers"): ("member", None),
    ("POST", "/api/v1/tokenizers/import"): ("member", None),
    ("DELETE", "/api/v1/tokenizers/{tokenizer_id}"): ("member", None),  # the issue names no rule: any member
    ("POST", "/api/v1/tokenizers/{tokenizer_id}/merges"): ("member", None),
    ("POST", "/api/v1/inference"): ("member", None),
    ("POST", "/api/v1/attention"): ("member", None),
    ("POST", "/api/v1/finetune"): ("member", None),
    ("POST", "/api/v1/models"): ("member", None),
    ("DELETE", "/api/v1/models/{model_id}"): ("maintainer", None),  # its uploader (the admin here) or a maintainer
    ("POST", "/api/v1/chat/messages"): ("member", None),  # into the user's own conversation, or a new one
    ("DELETE", "/api/v1/chat/conversations/{conversation_id}"): ("member", None),  # the user's own only
    ("POST", "/api/v1/serving/loadtest"): ("member", None),
    ("POST", "/api/v1/workers/{name}/drain"): ("maintainer", None),  # of a shared team, or staff
    ("POST", "/api/v1/workers/{name}/undrain"): ("maintainer", None),
}
PUBLIC_API = set()  # (method, path) of API operations open to anonymous users: none


@dataclass
class Page:
    method: str = "GET"
    public: bool = False  # anonymous users may use it (log-in, sign-up, log-out)
    query: str = ""  # with {placeholders} for team A's objects: references an outsider may try
    data: dict = field(default_factory=dict)  # the POST data; a {placeholder} makes it an object route
    role: str = "member"  # for a POST-only page; "self": the user's own object (another member gets a 404)
    target: str = "job"  # the job a role test acts on
    post_role: str = ""  # a GET page whose form POSTs need a role
    post_data: dict = field(default_factory=dict)


# Every named page. Placeholders: {job} {member_job} {ended_job} {dataset} {tokenizer} {team} {member_id}
# {conversation}.
PAGES = {
    "login": Page(public=True),
    "logout": Page(public=True, method="POST"),
    "signup": Page(public=True),
    "home": Page(),
    "compose": Page(query="data.dataset={dataset}&data.tokenizer_id={tokenizer}&train.init_from_job={job}"),
    "compare": Page(),
    "queue": Page(),
    "runs": Page(query="jobs={job},{member_job}"),
    "job": Page(),
    "job_cancel": Page(method="POST", role="owner-or-maintainer"),
    "job_retry": Page(method="POST", role="owner-or-maintainer", target="ended_job"),
    "datasets": Page(),
    "tokenizers": Page(),
    "inference": Page(query="job={job}"),
    "chat": Page(),
    "chat_conversation": Page(),
    "attention": Page(),
    "finetune": Page(),
    "models": Page(),
    "serving": Page(),
    "model_delete": Page(method="POST", role="owner-or-maintainer"),  # its uploader (the admin) or a maintainer
    "account": Page(),
    "token_revoke": Page(method="POST", role="self"),
    "switch_team": Page(method="POST", data={"team": "{team}"}),
    "workers": Page(),
    "team": Page(post_role="admin", post_data={"action": "role", "user": "{member_id}", "role": "admin"}),
}
SKIPPED_NAMESPACES = {"api": "the API: covered operation by operation from its schema",
                      "admin": "Django's admin: test_admin_site",
                      "openai": "the OpenAI-compatible endpoint (/v1/): an API token only, never a session "
                                "(tests/explorer/serving/test_openai_api.py); it serves models, not a team's objects"}
WS_PARAMS = {"job_id": "job", "team_id": "team"}

# Role rules the issue asks for that the code does not enforce yet: strict xfails, so they fail
# (XPASS) the day they are enforced and the mark must go.
PENDING_ROLES = {}


# ---------------------------------------------------------------------------- discovery
def api_operations():
    schema = api.get_openapi_schema()
    ops = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            ops.append(ApiOp(method.upper(), path, op, schema.get("components", {}).get("schemas", {})))
    return sorted(ops, key=lambda o: (o.path, o.method))


def page_patterns():
    """(name, route, path parameters) of every page, and the namespaces skipped."""
    found = []

    def walk(patterns, prefix):
        for p in patterns:
            if isinstance(p, URLResolver):
                if p.namespace not in SKIPPED_NAMESPACES:
                    walk(p.url_patterns, prefix + str(p.pattern))
                continue
            found.append((p.name, prefix + str(p.pattern), list(p.pattern.converters)))

    walk(get_resolver().url_patterns, "")
    return found


def ws_patterns():
    return [(str(p.pattern), list(p.pattern.converters)) for p in websocket_urlpatterns]


@dataclass
class ApiOp:
    method: str
    path: str
    spec: dict
    components: dict

    def __str__(self):
        return f"{self.method} {self.path}"

    def params(self, where):
        return [p["name"] for p in self.spec.get("parameters", []) if p["in"] == where]

    @property
    def body(self):
        """("json" | "multipart" | None, the body's schema)."""
        content = self.spec.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            return "json", self._resolve(content["application/json"]["schema"])
        if "multipart/form-data" in content:
            return "multipart", self._resolve(content["multipart/form-data"]["schema"])
        return None, {}

    @property
    def object_params(self):
        return [p for p in self.params("path") if (param_spec(self.path, p) or (None, False))[1]]

    @property
    def takes_team(self):
        return "team" in self.params("query") or "team" in self.body[1].get("properties", {})

    def _resolve(self, schema):
        if "$ref" in schema:
            return self.components[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def example(self, name, schema):
        schema = self._resolve(schema)
        if name in BODY_EXAMPLES:
            return BODY_EXAMPLES[name]
        if "default" in schema:
            return schema["default"]
        if "anyOf" in schema:
            return self.example(name, next(s for s in schema["anyOf"] if s.get("type") != "null"))
        kind = schema.get("type")
        if kind == "object":
            return {k: self.example(k, v) for k, v in schema.get("properties", {}).items() if k in schema.get("required", [])}
        return {"array": [], "string": "x", "integer": 1, "number": 1.0, "boolean": False}.get(kind)


API_OPS = api_operations()
PAGE_PATTERNS = page_patterns()
WS_PATTERNS = ws_patterns()


# ---------------------------------------------------------------------------- the world
@dataclass
class World:
    team: Team
    admin: object
    maintainer: object
    member: object
    outsider: object
    outsider_token: str
    job: Job  # the admin's, queued
    member_job: Job  # the plain member's, queued
    ended_job: Job  # the admin's, cancelled
    dataset: Dataset
    tokenizer: Tokenizer
    token: ApiToken  # the admin's
    worker: Worker  # busy with the admin's job
    conversation: object = None  # the plain member's (their own: the calls below by the member reach it)
    model: object = None  # an uploaded model of team A (the admin's)
    download: str = "adapter"
    step: int = 1
    preset: str = ""

    def values(self):
        return {"conversation": self.conversation.pk,"job": self.job.pk, "member_job": self.member_job.pk, "ended_job": self.ended_job.pk,
                "dataset": self.dataset.pk, "tokenizer": self.tokenizer.pk, "team": self.team.pk,
                "member_id": self.member.pk, "token": self.token.pk, "step": self.step, "preset": self.preset,
                "model": self.model.pk, "download": self.download,
                "worker": self.worker.name}

    def fill(self, text, missing=False):
        values = {k: (MISSING if missing and isinstance(v, int) and k != "step" else v) for k, v in self.values().items()}
        return text.format(**values)


@pytest.fixture
def world(db, bob, tiny_spec):
    users = get_user_model().objects
    team = Team.objects.create(name="Zebra Team", slug="team-a")
    people = {}
    for role in Membership.Role.values:
        people[role] = users.create_user(f"zebra-{role}", password="pw-zebra-123")
        Membership.objects.create(user=people[role], team=team, role=role)
    admin, member = people["admin"], people["member"]
    ended = training_jobs.create_job(admin, team, tiny_spec, name="zebra-old-job")
    services.cancel_job(ended)
    tokenizer, _ = lab.train(admin, team, {"name": "zebra-tok", "kind": "bpe", "vocab_size": 270, "corpus": "text",
                                           "text": "the cat sat on the mat. " * 40})
    job = training_jobs.create_job(admin, team, tiny_spec, name="zebra-job")
    return World(
        team=team, admin=admin, maintainer=people["maintainer"], member=member,
        outsider=bob[0], outsider_token=ApiToken.issue(bob[0], "cli")[1],
        job=job, worker=Worker.objects.create(name="cpu@matrix", queues=["cpu"], current_job=job),
        member_job=training_jobs.create_job(member, team, tiny_spec, name="zebra-member-job"),
        ended_job=Job.objects.get(pk=ended.pk),
        dataset=save_upload(team, admin, SimpleUploadedFile("zebra-data.txt", b"a few words of text\n" * 20)),
        tokenizer=tokenizer, token=ApiToken.issue(admin, "zebra-token")[0],
        preset=training_jobs.list_presets()[0]["name"],
        conversation=Conversation.objects.create(owner=member, title="zebra-chat"),
        model=UploadedModel.objects.create(team=team, owner=admin, name="zebra-model", directory="zebra-model",
                                           source_format="transformers", file_name="zebra.zip", size_bytes=1,
                                           model_type="llama", parameters=1, context=64, config={},
                                           logits_check={}),
    )


def client_for(user=None):
    c = Client()
    if user is not None:
        c.force_login(user)
    return c


def snapshot(team=None):
    """Everything a refused change must leave as it was (of ``team`` only, when given)."""
    models = {Job: "team", Membership: "team", Team: "pk", Tokenizer: "team", Dataset: "team", ApiToken: "user__teams",
              UploadedModel: "team"}
    out = {}
    for model, owner in models.items():
        rows = model.objects.order_by("pk")
        if team is not None:
            rows = rows.filter(**{owner: team.pk})
        out[model.__name__] = [{k: v for k, v in row.items() if k != "last_used_at"} for row in rows.values()]
    return out


def leaks(response):
    return MARKER in response.content.lower()


def shown(response):
    return f"{response.status_code} {response.content[:300]!r}"


# ---------------------------------------------------------------------------- calling an operation
def call_api(op, w, client, *, missing=False, team=None, job=None, headers=None):
    values = w.values()
    path = op.path
    for name in op.params("path"):
        attr, is_object = param_spec(op.path, name)
        value = job.pk if (name == "job_id" and job is not None) else values[attr]
        path = path.replace("{" + name + "}", str(MISSING if (missing and is_object) else value))
    query = {"team": team} if team is not None and "team" in op.params("query") else {}
    kind, schema = op.body
    extra = {"HTTP_AUTHORIZATION": f"Bearer {headers}"} if headers else {}
    method = getattr(client, op.method.lower())
    url = path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    if kind == "json":
        body = {**op.example("", schema), **BODY_OVERRIDES.get((op.method, op.path), {})}
        if team is not None and "team" in schema.get("properties", {}):
            body["team"] = team
        return method(url, data=json.dumps(body), content_type="application/json", **extra)
    if kind == "multipart":
        body = {"file": SimpleUploadedFile("hello.txt", b"hello world\n")}
        if team is not None:
            body["team"] = team
        return method(url, data=body, **extra)
    return method(url, **extra)


def normalise(response, w):
    """The body with team A's ids and MISSING blanked: a 404 for A's object and for a missing one
    must read the same."""
    text = response.content.decode(errors="replace")
    for value in [MISSING, *[v for k, v in w.values().items() if isinstance(v, int) and k != "step"]]:
        text = re.sub(rf"\b{value}\b", "<id>", text)
    return text


# ---------------------------------------------------------------------------- the tests
def test_every_route_is_classified():
    problems = []
    for op in API_OPS:
        for name in op.params("path"):
            if param_spec(op.path, name) is None:
                problems.append(f"{op}: path parameter {name!r} is not in PATH_PARAMS (say which World object it names)")
        if op.method != "GET" and (op.method, op.path) not in API_ROLES:
            problems.append(f"{op}: add it to API_ROLES with the role it needs")
    known = {(op.method, op.path) for op in API_OPS}
    problems += [f"API_ROLES names {m} {p}, which no longer exists: remove it" for m, p in API_ROLES if (m, p) not in known]
    names = set()
    for name, route, params in PAGE_PATTERNS:
        names.add(name)
        if name not in PAGES:
            problems.append(f"page {route!r} (name {name!r}) is not in PAGES: add it with its method and role")
        for p in params:
            if param_spec(route, p) is None:
                problems.append(f"page {route!r}: path parameter {p!r} is not in PATH_PARAMS")
    problems += [f"PAGES names {n!r}, which no longer exists: remove it" for n in PAGES if n not in names]
    for route, params in WS_PATTERNS:
        problems += [f"websocket {route!r}: parameter {p!r} is not in WS_PARAMS" for p in params if p not in WS_PARAMS]
    assert not problems, "The security matrix cannot place these routes:\n" + "\n".join(problems)


@pytest.mark.parametrize("op", API_OPS, ids=str)
def test_api_operation_refuses_outsiders(op, world):
    w = world
    before = snapshot(w.team)
    if (op.method, op.path) not in PUBLIC_API:
        anon = call_api(op, w, Client())
        assert anon.status_code == 401, f"{op} anonymous: {shown(anon)}"
        assert not leaks(anon)
    if any(param_spec(op.path, p) is None for p in op.params("path")):
        pytest.fail(f"{op}: unknown path parameter; see test_every_route_is_classified")
    session = client_for(w.outsider)
    for who, client, token in (("other team (session)", session, None), ("other team (token)", Client(), w.outsider_token)):
        if op.object_params:
            theirs = call_api(op, w, client, headers=token)
            missing = call_api(op, w, client, headers=token, missing=True)
            assert theirs.status_code == 404, f"{op} {who} on team A's object: {shown(theirs)}"
            assert normalise(theirs, w) == normalise(missing, w), f"{op} {who}: A's object answers unlike a missing one"
            assert not leaks(theirs), f"{op} {who}: {shown(theirs)}"
        if op.takes_team:
            for ref in (w.team.slug, str(w.team.pk)):
                resp = call_api(op, w, client, headers=token, team=ref)
                assert resp.status_code == 404, f"{op} {who} naming team A ({ref}): {shown(resp)}"
                assert not leaks(resp)
        if not op.object_params:  # their own view: lists, options, their own team's creations
            resp = call_api(op, w, client, headers=token)
            assert resp.status_code < 500 and resp.status_code != 401, f"{op} {who}: {shown(resp)}"
            assert not leaks(resp), f"{op} {who} sees team A's data: {shown(resp)}"
    assert snapshot(w.team) == before, f"{op}: an outsider changed team A's data"


def api_role_cases():
    cases = []
    for op in API_OPS:
        role, target = API_ROLES.get((op.method, op.path), ("member", None))
        if role == "member":
            continue
        too_low = {"owner-or-maintainer": ["member"], "maintainer": ["member"], "admin": ["member", "maintainer"]}[role]
        enough = {"owner-or-maintainer": "maintainer", "maintainer": "maintainer", "admin": "admin"}[role]
        for who in too_low:
            reason = PENDING_ROLES.get((op.method, op.path, who))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(op, target, who, enough, marks=marks, id=f"{op}-{who}"))
    return cases


@pytest.mark.parametrize("op, target, who, enough", api_role_cases())
def test_api_role_is_needed(op, target, who, enough, world):
    w = world
    job = getattr(w, target) if target else None
    before = snapshot()
    refused = call_api(op, w, client_for(getattr(w, who)), job=job)
    assert refused.status_code == 403, f"{op} by a {who} on the admin's {target}: {shown(refused)}"
    assert snapshot() == before, f"{op} by a {who}: refused, yet something changed"
    allowed = call_api(op, w, client_for(getattr(w, enough)), job=job)
    assert 200 <= allowed.status_code < 300, f"{op} by a {enough}: {shown(allowed)}"


@pytest.mark.parametrize("op", [op for op in API_OPS if op.object_params], ids=str)
def test_api_members_reach_their_teams_objects(op, world):
    """The other side of the 404s above: the same call by a member of team A gets past the lookup
    (so the outsiders' 404 is about the team, not a wrong id in the test)."""
    w = world
    role, target = API_ROLES.get((op.method, op.path), ("member", None))
    user = w.member if role == "member" else w.admin
    job = getattr(w, target) if target else None
    theirs = call_api(op, w, client_for(w.outsider), job=job)
    mine = call_api(op, w, client_for(user), job=job)
    assert mine.status_code not in (401, 403) and (mine.status_code != 404 or mine.content != theirs.content), (
        f"{op} by team A's {role}: {shown(mine)}")


def test_high_priority_is_for_maintainers(world):
    w = world
    url = f"/api/v1/jobs/{w.member_job.pk}/priority"
    body = json.dumps({"priority": "high"})
    before = snapshot()
    refused = client_for(w.member).post(url, data=body, content_type="application/json")  # on their own job
    assert refused.status_code == 403 and snapshot() == before, shown(refused)
    allowed = client_for(w.maintainer).post(url, data=body, content_type="application/json")
    assert allowed.status_code == 200 and allowed.json()["priority"] == "high", shown(allowed)


# ---------------------------------------------------------------------------- pages
def page_url(w, name, params, *, missing=False, query=""):
    kwargs = {p: (MISSING if missing else w.values()[param_spec(name, p)[0]]) for p in params}
    url = reverse(name, kwargs=kwargs)
    return url + ("?" + w.fill(query, missing) if query else "")


def call_page(client, w, name, params, page, *, missing=False, job=None, post=None):
    """GET the page (POST for a POST-only one, or with ``post`` as a GET page's form); ``job``
    replaces the job in the path."""
    if job is not None:
        url = reverse(name, kwargs={"job_id": job.pk})
    else:
        url = page_url(w, name, params, missing=missing, query=page.query if page.method == "GET" and post is None else "")
    if page.method == "POST" or post is not None:
        data = {k: w.fill(str(v), missing) for k, v in (post if post is not None else page.data).items()}
        return client.post(url, data)
    return client.get(url)


PAGE_CASES = [pytest.param(name, params, id=name) for name, _route, params in PAGE_PATTERNS]


@pytest.mark.parametrize("name, params", PAGE_CASES)
def test_page_refuses_outsiders(name, params, world):
    w = world
    if name not in PAGES:
        pytest.fail(f"page {name!r} is not in PAGES; see test_every_route_is_classified")
    page = PAGES[name]
    if page.public:
        return
    before = snapshot(w.team)
    anon = call_page(Client(), w, name, params, page)
    assert anon.status_code == 302 and anon["Location"].startswith(reverse("login")), f"{name} anonymous: {shown(anon)}"
    outsider = client_for(w.outsider)
    object_route = any(param_spec(name, p)[1] for p in params) or any("{" in str(v) for v in page.data.values())
    theirs = call_page(outsider, w, name, params, page)
    assert not leaks(theirs), f"{name} shows team A's data to another team: {shown(theirs)}"
    if object_route:
        missing = call_page(outsider, w, name, params, page, missing=True)
        assert theirs.status_code == 404, f"{name} by another team on A's object: {shown(theirs)}"
        assert missing.status_code == 404 and not leaks(missing)
    else:
        assert theirs.status_code in (200, 302), f"{name} by another team: {shown(theirs)}"
    if page.post_role:  # the outsider posts the form aimed at team A: nothing of A changes
        resp = call_page(outsider, w, name, params, page, post=page.post_data)
        assert resp.status_code in (200, 302, 403, 404) and not leaks(resp)
    assert snapshot(w.team) == before, f"{name}: an outsider changed team A's data"
    if object_route:  # and a member of A gets past the lookup
        user = w.admin if page.role in ("self", "owner-or-maintainer") else w.member
        mine = call_page(client_for(user), w, name, params, page)
        assert mine.status_code in (200, 302), f"{name} by team A's admin: {shown(mine)}"


def page_role_cases():
    cases = []
    for name, _route, params in PAGE_PATTERNS:
        page = PAGES.get(name)
        if page is None:
            continue
        role = page.post_role or page.role
        if role in ("member", "public") or page.public:
            continue
        too_low = {"owner-or-maintainer": ["member"], "maintainer": ["member"], "admin": ["member", "maintainer"],
                   "self": ["member", "maintainer"]}[role]
        enough = {"owner-or-maintainer": "maintainer", "maintainer": "maintainer", "admin": "admin", "self": "admin"}[role]
        for who in too_low:
            reason = PENDING_ROLES.get((name, who))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(name, params, who, enough, marks=marks, id=f"{name}-{who}"))
    return cases


@pytest.mark.parametrize("name, params, who, enough", page_role_cases())
def test_page_role_is_needed(name, params, who, enough, world):
    """Refused: a 403 or 404, or the page's redirect with a warning; either way nothing changes.
    The role that is enough changes something."""
    w = world
    page = PAGES[name]
    job = getattr(w, page.target) if "job_id" in params else None
    post = page.post_data if page.post_role else None
    before = snapshot()
    refused = call_page(client_for(getattr(w, who)), w, name, params, page, job=job, post=post)
    assert refused.status_code in (302, 403, 404), f"{name} by a {who}: {shown(refused)}"
    assert snapshot() == before, f"{name} by a {who}: something changed"
    allowed = call_page(client_for(getattr(w, enough)), w, name, params, page, job=job, post=post)
    assert allowed.status_code in (200, 302), f"{name} by a {enough}: {shown(allowed)}"
    assert snapshot() != before, f"{name} by a {enough}: nothing changed (is the test's target right?)"


def test_admin_site_refuses_users_who_are_not_staff(world):
    for client in (Client(), client_for(world.outsider), client_for(world.admin)):  # a team admin is not staff
        resp = client.get("/admin/")
        assert resp.status_code == 302 and resp["Location"].startswith("/admin/login/")
        assert client.get(f"/admin/jobs/job/{world.job.pk}/change/").status_code == 302


# ---------------------------------------------------------------------------- websockets
def ws_headers(user=None):
    headers = [(b"origin", b"http://127.0.0.1")]
    if user is not None:
        c = client_for(user)
        cookie = c.cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return headers


async def ws_connect(path, headers):
    from config.asgi import application

    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await comm.connect(timeout=5)
    if connected:
        await comm.disconnect()
    return connected, code


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("route, params", [pytest.param(r, p, id=r) for r, p in WS_PATTERNS])
def test_websocket_refuses_outsiders(route, params, world):
    w = world
    if any(p not in WS_PARAMS for p in params):
        pytest.fail(f"websocket {route!r}: a parameter is not in WS_PARAMS; see test_every_route_is_classified")

    def path(missing=False):
        out = "/" + route
        for p in params:
            out = re.sub(rf"<(\w+:)?{p}>", str(MISSING if missing else getattr(w, WS_PARAMS[p]).pk), out)
        return out

    anonymous, outsider, member = ws_headers(), ws_headers(w.outsider), ws_headers(w.member)

    async def scenario():
        assert await ws_connect(path(), anonymous) == (False, 4401), "anonymous"
        assert await ws_connect(path(), outsider) == (False, 4403), "another team"
        assert await ws_connect(path(missing=True), member) == (False, 4403), "a missing id"
        assert (await ws_connect(path(), member))[0], "a member of the team is refused"

    asyncio.run(scenario())
