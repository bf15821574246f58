from django.utils.functional import SimpleLazyObject

from explorer.accounts.teams import current_team, user_teams


class CurrentTeamMiddleware:
    """``request.team``: the team the user is working in (switchable; kept in the session), taken
    from ``request.user_teams`` (the user's teams, read once a request, for the team switcher too)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.user_teams = SimpleLazyObject(lambda: list(user_teams(request.user)))
        request.team = SimpleLazyObject(lambda: current_team(request.user_teams, request.session))
        return self.get_response(request)
