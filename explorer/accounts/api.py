"""The API's shared pieces and the account endpoints: who is asking (the browser session, or a
personal API token sent as ``Authorization: Bearer lae_...``), which team a request acts for, and
the error shape every endpoint answers with."""
from django.conf import settings
from ninja import Router, Schema
from ninja.errors import HttpError
from ninja.security import HttpBearer

from explorer.accounts.models import ApiToken
from explorer.accounts.teams import resolve_team, user_teams


class TokenAuth(HttpBearer):
    def authenticate(self, request, token):
        user = ApiToken.authenticate(token)
        if user is not None:
            request.user = user
        return user


class TeamRef(Schema):
    id: int
    name: str


class ErrorOut(Schema):
    detail: str
    errors: dict[str, str] = {}


def team_or_400(request, ref=None):
    team = resolve_team(request.user, ref, session=getattr(request, "session", None))
    if team is None:
        raise HttpError(400, "You belong to no team; ask an admin to add you to one")
    return team


account = Router(tags=["account"])


@account.get("/me", summary="Who you are and your teams")
def me(request):
    return {
        "username": request.user.get_username(),
        "teams": [{"id": t.pk, "name": t.name, "slug": t.slug} for t in user_teams(request.user)],
        "upload_max_bytes": settings.UPLOAD_MAX_BYTES,
    }
