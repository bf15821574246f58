from explorer.accounts.teams import user_teams


def teams(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    teams = getattr(request, "user_teams", None)  # CurrentTeamMiddleware's, read once a request
    return {"user_teams": list(teams) if teams is not None else list(user_teams(user)), "current_team": request.team}
