from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.utils.functional import SimpleLazyObject

from explorer.accounts.teams import current_team, user_teams


class CurrentTeamMiddleware:
    """``request.team``: the team the user is working in (switchable; kept in the session), taken
    from ``request.user_teams`` (the user's teams, read once a request, for the team switcher too).
    Both lazy, so it runs as well in an async chain (the OpenAI endpoint's async views, which
    never read them) as in a sync one."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _attach(self, request):
        request.user_teams = SimpleLazyObject(lambda: list(user_teams(request.user)))
        request.team = SimpleLazyObject(lambda: current_team(request.user_teams, request.session))

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        self._attach(request)
        return self.get_response(request)

    async def __acall__(self, request):
        self._attach(request)
        return await self.get_response(request)
