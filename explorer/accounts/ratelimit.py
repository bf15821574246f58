"""Rate limits, counted in Redis: failed log-ins per client address, job submissions per user.

A fixed window: one counter per key and window (``INCR`` and ``EXPIRE`` in one pipeline), so a
check is one round trip and the counts are shared by every web process. ``RATELIMIT_*`` settings
(``EXPLORER_RATELIMIT_*`` in the environment) set each limit; 0 turns it off. When Redis does not
answer, the limits are skipped with a logged warning: an outage must never lock everyone out.
"""
import functools
import logging
import math
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.http import JsonResponse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    message: str
    retry_after: int  # seconds until the window ends

    def api_response(self):
        response = JsonResponse({"detail": self.message}, status=429)
        response["Retry-After"] = str(self.retry_after)
        return response


@functools.lru_cache(maxsize=4)
def _client(url):
    # Short timeouts: a slow Redis delays a log-in by at most ~half a second before failing open.
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


class Limit:
    """At most ``settings.<limit_setting>`` hits per ``settings.<window_setting>`` seconds per key."""

    def __init__(self, scope, limit_setting, window_setting):
        self.scope, self.limit_setting, self.window_setting = scope, limit_setting, window_setting

    @property
    def limit(self):
        return getattr(settings, self.limit_setting)

    @property
    def window(self):
        return max(1, getattr(settings, self.window_setting))

    def _key(self, ident, now):
        return f"{settings.RATELIMIT_PREFIX}:{self.scope}:{ident}:{int(now // self.window)}"

    def _retry_after(self, now):
        return max(1, math.ceil(self.window - now % self.window))

    def count(self, ident, add=0):
        """Hits of ``ident`` in the current window (after adding ``add``); None when Redis is down."""
        now = time.time()
        key = self._key(ident, now)
        try:
            r = _client(settings.REDIS_URL)
            if not add:
                return int(r.get(key) or 0)
            pipe = r.pipeline()
            pipe.incrby(key, add)
            pipe.expire(key, self.window + 1)  # the key names its window, so renewing its expiry is harmless
            return pipe.execute()[0]
        except (redis.RedisError, OSError) as exc:
            log.warning("rate limit %s not applied: Redis at %s did not answer (%s)", self.scope, settings.REDIS_URL, exc)
            return None

    def exceeded(self, ident):
        """Seconds to wait when ``ident`` has used up the window, else None (without counting a hit)."""
        if self.limit <= 0:
            return None
        n = self.count(ident)
        return self._retry_after(time.time()) if n is not None and n >= self.limit else None

    def hit(self, ident):
        """Count one hit; seconds to wait when it is over the limit (then it does not go ahead), else None."""
        if self.limit <= 0:
            return None
        n = self.count(ident, add=1)
        return self._retry_after(time.time()) if n is not None and n > self.limit else None


LOGIN = Limit("login", "RATELIMIT_LOGIN", "RATELIMIT_LOGIN_WINDOW_S")
JOBS = Limit("jobs", "RATELIMIT_JOBS", "RATELIMIT_JOBS_WINDOW_S")


def client_ip(request):
    # The ASGI server (uvicorn) puts a trusted proxy's X-Forwarded-For into the client address.
    return request.META.get("REMOTE_ADDR") or "unknown"


def _wait(seconds):
    return f"{seconds} s" if seconds < 90 else f"{math.ceil(seconds / 60)} minutes"


# ---------------------------------------------------------------------------- log-in
class LoginView(auth_views.LoginView):
    """Django's log-in page, refusing an address (HTTP 429) after RATELIMIT_LOGIN failed attempts
    in RATELIMIT_LOGIN_WINDOW_S. Only failures count, so a shared office address is not locked out
    by people who type their password right."""

    def post(self, request, *args, **kwargs):
        ip = client_ip(request)
        wait = LOGIN.exceeded(ip)
        if wait:
            messages.error(request, f"Too many failed log-ins from your address ({settings.RATELIMIT_LOGIN} in "
                                    f"{_wait(settings.RATELIMIT_LOGIN_WINDOW_S)}); try again in {_wait(wait)}.")
            response = self.render_to_response(self.get_context_data(form=self.get_form_class()(request)), status=429)
            response["Retry-After"] = str(wait)
            return response
        response = super().post(request, *args, **kwargs)
        if response.status_code != 302:  # the form came back: wrong credentials
            LOGIN.count(ip, add=1)
        return response


# ---------------------------------------------------------------------------- job submission
def refuse_job(user):
    """Count a job submission of ``user``; a ``Refusal`` when it is over RATELIMIT_JOBS, else None."""
    wait = JOBS.hit(user.pk)
    if wait is None:
        return None
    return Refusal(f"Too many job submissions: at most {settings.RATELIMIT_JOBS} per "
                   f"{_wait(settings.RATELIMIT_JOBS_WINDOW_S)}; try again in {_wait(wait)}.", wait)
