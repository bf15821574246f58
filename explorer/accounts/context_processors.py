from explorer.accounts.teams import user_teams


def teams(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"user_teams": list(user_teams(user)), "current_team": request.team}
