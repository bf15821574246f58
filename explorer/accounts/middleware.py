from django.utils.functional import SimpleLazyObject

from explorer.accounts.teams import resolve_team


class CurrentTeamMiddleware:
    """``request.team``: the team the user is working in (switchable; kept in the session)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.team = SimpleLazyObject(lambda: resolve_team(request.user, session=request.session))
        return self.get_response(request)
