"""Settings, all read from the environment (see README "Configuration").

Defaults give a working local app: SQLite under var/, Redis at REDIS_URL (``make run`` starts an
embedded one and sets it when the variable is unset).
"""
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parents[2]
VAR_DIR = Path(os.environ.get("EXPLORER_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name, default=False):
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_int(name, default):
    return int(os.environ.get(name, default))


# ---------------------------------------------------------------------------- core
DEBUG = env_bool("DJANGO_DEBUG", False)
PRODUCTION = env_bool("EXPLORER_PRODUCTION", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        # Refuse to start a production deployment with a guessable key.
        raise RuntimeError("DJANGO_SECRET_KEY must be set when EXPLORER_PRODUCTION=1")
    # Local use: a random key kept under var/ so sessions survive restarts.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        import secrets

        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    SECRET_KEY = key_file.read_text().strip()

ALLOWED_HOSTS = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]
if PRODUCTION:
    SESSION_COOKIE_SECURE = env_bool("EXPLORER_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "explorer",
    "explorer.accounts",
    "explorer.datasets",
    "explorer.jobs",
    "explorer.scheduling",
    "explorer.training",
    "explorer.inference",
    "explorer.tokenizers",
    "explorer.pretrained",
    "explorer.serving",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "explorer.accounts.middleware.CurrentTeamMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "explorer.accounts.context_processors.teams",
            ],
        },
    },
]

# ---------------------------------------------------------------------------- database
# SQLite under var/ unless DATABASE_URL is set (postgres://user@host:5432/name via psycopg 3).
DATABASES = {
    "default": dj_database_url.config(
        env="DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'explorer.sqlite3'}", conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while a worker writes events; IMMEDIATE avoids
    # "database is locked" on lock upgrades (Django 5.1+).
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file (not :memory:) so that test subprocesses (worker, ASGI server) share it.
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("EXPLORER_TEST_SQLITE", str(VAR_DIR / "test.sqlite3"))}
# PostgreSQL: a pool of at most DATABASE_POOL_SIZE connections per process (Django's psycopg
# pool) instead of a connection opened and closed by every request; 0 (the default) turns it off.
# The web processes set it (docker-compose, the production command); a request under load then
# skips a server backend's start-up.
try:
    DATABASE_POOL_SIZE = int(os.environ.get("DATABASE_POOL_SIZE") or 0)
except ValueError:
    raise ImproperlyConfigured(f"DATABASE_POOL_SIZE must be a whole number, not {os.environ['DATABASE_POOL_SIZE']!r}") from None
if DATABASE_POOL_SIZE < 0:
    raise ImproperlyConfigured(f"DATABASE_POOL_SIZE must be 0 (no pool) or more, not {DATABASE_POOL_SIZE}")
if DATABASE_POOL_SIZE and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": DATABASE_POOL_SIZE, "timeout": 30}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ---------------------------------------------------------------------------- redis, celery, channels
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_db(url):
    """The database number of a Redis URL: ``redis://host:port/3`` or ``unix:///path?db=3`` (0 if none)."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    db = parse_qs(parts.query).get("db", [""])[0] or (parts.path.strip("/") if parts.scheme != "unix" else "")
    return int(db) if db.isdigit() else 0


def celery_url(url):
    """Celery names a unix-socket Redis ``redis+socket://``; channels_redis says ``unix://``."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://"):]
    return url


CELERY_BROKER_URL = celery_url(REDIS_URL)
CELERY_TASK_ACKS_LATE = True  # a job's message is acknowledged only when it has finished
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # training jobs are long: take one at a time, keep FIFO order
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_IGNORE_RESULT = True  # results live on the Job row, not in a result backend
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 6 * 3600}
CELERY_BEAT_SCHEDULE = {
    "reap-stale-jobs": {"task": "explorer.tasks.reap_stale_jobs", "schedule": 15.0, "options": {"queue": "cpu"}},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# Redis pub/sub: a group_send is one PUBLISH, and the ASGI server hears every group it joined on
# one connection. The list-based RedisChannelLayer took a Lua script per send and a blocking pop
# plus clean-up per message received; with ten jobs streaming 50 events/s it held a core of this
# 2-core machine and put p99 worker->browser latency at 100-115 ms, against 12 ms with pub/sub
# (bench/event_latency.py, bench/README.md). Pub/sub keeps nothing for a listener that is away;
# the job consumer reads whatever it missed from the job's log (explorer.jobs.consumers). Redis pub/sub
# channels are server-wide, not per database, so the prefix carries the database's number: two
# apps on one Redis server with different databases never hear each other's jobs.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            "prefix": os.environ.get("EXPLORER_CHANNEL_PREFIX") or f"asgi{redis_db(REDIS_URL)}",
        },
    }
}

# ---------------------------------------------------------------------------- jobs
# A job whose worker has sent no heartbeat (every 5 s) for this long is taken from it by the
# reaper (which runs every 15 s): requeued to resume from its last checkpoint, JOB_AUTO_RETRIES
# times, then failed with the reason. 40 + 15 s: a killed worker's job leaves "running" within a minute.
JOB_HEARTBEAT_TIMEOUT_S = env_int("EXPLORER_JOB_HEARTBEAT_TIMEOUT_S", 40)
JOB_AUTO_RETRIES = env_int("EXPLORER_JOB_AUTO_RETRIES", 1)
# A worker keeps a job's events in memory while the database refuses them, for at most this long;
# then the job fails with that reason (explorer.jobs.services.EventRecorder).
EVENT_DB_OUTAGE_S = env_int("EXPLORER_EVENT_DB_OUTAGE_S", 120)
# Workers (explorer.scheduling.workers): the share of a worker's memory its jobs may use (split between its
# concurrent jobs), how often it sends a heartbeat, and after how long without one it is offline.
WORKER_MEMORY_FRACTION = float(os.environ.get("EXPLORER_WORKER_MEMORY_FRACTION", "0.8"))
WORKER_HEARTBEAT_S = env_int("EXPLORER_WORKER_HEARTBEAT_S", 5)
WORKER_OFFLINE_AFTER_S = env_int("EXPLORER_WORKER_OFFLINE_AFTER_S", 30)
# Estimated training memory a job may need, per queue (MiB), until a worker of the queue has
# registered (then the fit gate uses the workers' own memory); refused before queueing when above.
WORKER_MEMORY_BUDGET_MB = {
    "cpu": env_int("EXPLORER_CPU_MEMORY_BUDGET_MB", 4096),
    "gpu": env_int("EXPLORER_GPU_MEMORY_BUDGET_MB", 40960),
}
# Serving (explorer/serving, `manage.py serve <model>`): the serving process's batch and KV-cache
# memory; the web's bounded queue (requests in flight beyond the batch), tokens waiting to start,
# each team's tokens per minute (0: no limit) and a request's time limit.
SERVING_MAX_BATCH = env_int("EXPLORER_SERVING_MAX_BATCH", 16)
SERVING_KV_BYTES = env_int("EXPLORER_SERVING_KV_MB", 512) * 2**20
SERVING_BLOCK_SIZE = env_int("EXPLORER_SERVING_BLOCK_SIZE", 16)
SERVING_PREFILL_CHUNK = env_int("EXPLORER_SERVING_PREFILL_CHUNK", 256)
SERVING_MAX_QUEUED = env_int("EXPLORER_SERVING_MAX_QUEUED", 64)
SERVING_MAX_WAITING_TOKENS = env_int("EXPLORER_SERVING_MAX_WAITING_TOKENS", 65536)
SERVING_TEAM_TPM = env_int("EXPLORER_SERVING_TEAM_TPM", 200_000)
SERVING_REQUEST_TIMEOUT_S = env_int("EXPLORER_SERVING_REQUEST_TIMEOUT_S", 300)
# where a load-test job (run by a worker) reaches the OpenAI-compatible endpoint, as a client would
SERVING_ENDPOINT_URL = os.environ.get("EXPLORER_SERVING_ENDPOINT", "http://127.0.0.1:8000/v1")

UPLOAD_MAX_BYTES = env_int("EXPLORER_UPLOAD_MAX_BYTES", 20 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = UPLOAD_MAX_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
MEDIA_ROOT = Path(os.environ.get("EXPLORER_MEDIA_ROOT", VAR_DIR / "media"))
# Uploaded models (GGUF files, zipped transformers directories): far larger than text, so a limit of
# their own; streamed to disk, converted copies kept under MODEL_UPLOAD_ROOT (explorer.pretrained).
MODEL_UPLOAD_MAX_BYTES = env_int("EXPLORER_MODEL_UPLOAD_MAX_BYTES", 2 * 1024**3)
# up to this size an upload is converted and checked in the request; a larger one by a worker, as a job
MODEL_UPLOAD_SYNC_MAX_BYTES = env_int("EXPLORER_MODEL_UPLOAD_SYNC_MAX_BYTES", 32 * 1024 * 1024)
MODEL_UPLOAD_ROOT = Path(os.environ.get("EXPLORER_MODEL_UPLOAD_ROOT", MEDIA_ROOT / "models"))
MAX_STEPS = env_int("EXPLORER_MAX_STEPS", 100_000)
# Training jobs' checkpoints (safetensors), one directory per job; a retry resumes from them.
CHECKPOINT_ROOT = Path(os.environ.get("EXPLORER_CHECKPOINT_ROOT", MEDIA_ROOT / "checkpoints"))

# ---------------------------------------------------------------------------- rate limits
# Counted in Redis (REDIS_URL), per fixed window (explorer/ratelimit.py); 0 turns a limit off.
# Skipped, with a logged warning, while Redis does not answer.
RATELIMIT_LOGIN = env_int("EXPLORER_RATELIMIT_LOGIN", 10)  # failed log-ins per client address...
RATELIMIT_LOGIN_WINDOW_S = env_int("EXPLORER_RATELIMIT_LOGIN_WINDOW_S", 300)  # ...per 5 minutes
RATELIMIT_JOBS = env_int("EXPLORER_RATELIMIT_JOBS", 30)  # job submissions (API and composer) per user...
RATELIMIT_JOBS_WINDOW_S = env_int("EXPLORER_RATELIMIT_JOBS_WINDOW_S", 60)  # ...per minute
RATELIMIT_PREFIX = os.environ.get("EXPLORER_RATELIMIT_PREFIX", "ratelimit")

# ---------------------------------------------------------------------------- auth
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "compose"
LOGOUT_REDIRECT_URL = "login"

# ---------------------------------------------------------------------------- static files
STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("EXPLORER_STATIC_ROOT", VAR_DIR / "static"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
import plotly  # noqa: E402  (plotly.js ships inside the Python package: served locally, no CDN)

STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/plotly", Path(plotly.__file__).parent / "package_data"),
]
WHITENOISE_USE_FINDERS = True  # serve straight from the finders when collectstatic has not run
WHITENOISE_AUTOREFRESH = DEBUG

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("EXPLORER_LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
