"""The one settings module. Every knob is an environment variable; README.md lists them.

With no environment at all the platform runs on one machine with nothing to install: a SQLite file,
the in-memory channel layer and Celery's filesystem transport, all under ``var/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from rlhf_site.broker import filesystem_transport_options
from rlhf_site.dbconfig import database_config, sqlite_config
from rlhf_site.env import (
    envbool,
    envchoice,
    envcrontab,
    envfloat,
    envheader,
    envint,
    envjson,
    envlist,
    envrate,
    envsecret,
    envstr,
    generated_secret,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("VAR_DIR", str(BASE_DIR / "var")) or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

# Off unless asked for: the debug page shows settings and code to whoever triggers an error. bin/run
# turns it on for its loopback-only development server.
DEBUG = envbool("DEBUG", False)
# SECRET_KEY (or SECRET_KEY_FILE); else one generated once into VAR_DIR/secret_key (mode 0600), so a
# single machine works with no setup and never with a key known to anyone else. `check --deploy`
# warns about the generated one: several processes on several machines must share one key.
SECRET_KEY = envsecret("SECRET_KEY") or ""
SECRET_KEY_GENERATED = not SECRET_KEY
if SECRET_KEY_GENERATED:
    SECRET_KEY = generated_secret(VAR_DIR / "secret_key")

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

# HTTPS. Behind a TLS-terminating proxy set SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto:https (only if
# the proxy always sets or strips that header); `manage.py check --deploy` lists what is still missing.
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", False)
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
SECURE_PROXY_SSL_HEADER = envheader("SECURE_PROXY_SSL_HEADER")
# The debug page (DEBUG on) masks passwords inside URLs (DATABASE_URL, REDIS_URL, broker URLs) too.
DEFAULT_EXCEPTION_REPORTER_FILTER = "rlhf_site.errors.CredentialMaskingFilter"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_htmx",
    "django_prometheus",
    "channels",
    "rlhf_site",  # its management commands and system checks; no app imports rlhf_site
    "core",
    "models_registry",
    "feedback",
    "training",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Before anything decodes a body or query string with the charset a client declared.
    "rlhf_site.middleware.CharsetMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "rlhf_site.urls"
ASGI_APPLICATION = "rlhf_site.asgi.application"
WSGI_APPLICATION = "rlhf_site.wsgi.application"

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
                "feedback.context_processors.chat",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------
_database_url = envstr("DATABASE_URL")
DATABASES = {
    "default": (
        database_config(
            _database_url,
            pooler=envstr("DATABASE_POOLER", "auto") or "auto",
            pool=envbool("DATABASE_POOL", True),
            pool_min_size=envint("DATABASE_POOL_MIN_SIZE", 2, minimum=0),
            # HTTP_THREADS + ASYNC_DB_THREADS (below) by default: every thread that may hold one at once.
            pool_max_size=envint("DATABASE_POOL_MAX_SIZE", 20, minimum=1),
            # A request waits at most this long for a pooled connection, then gets 503 + Retry-After.
            pool_timeout=envfloat("DATABASE_POOL_TIMEOUT", 2.0, minimum=0.1),
            # libpq counts anything under 2 s as 2 s.
            connect_timeout=envint("DATABASE_CONNECT_TIMEOUT", 3, minimum=2),
        )
        if _database_url
        else sqlite_config(VAR_DIR / "db.sqlite3")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, cache (throttles), Celery broker ----------------------------------------
REDIS_URL = envstr("REDIS_URL")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL={REDIS_URL!r} must start with redis://, rediss:// or unix://.")

if REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
    # Rate limits live in the cache and fail open when Redis is down (core.cache); short socket
    # timeouts keep a Redis that does not answer from holding each request for redis-py's default 5 s.
    CACHES = {
        "default": {
            "BACKEND": "core.cache.RedisCache",  # Django's, with one connection pool per process
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery ------------------------------------------------------------------------------------
CELERY_FILESYSTEM_DIR = Path(envstr("CELERY_FILESYSTEM_DIR", str(VAR_DIR / "celery")) or "")
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_transport_options(CELERY_FILESYSTEM_DIR)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "purge-idempotency-keys": {"task": "core.tasks.purge_idempotency_keys", "schedule": 3600.0},
}

# --- Auth and the API --------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"

SUPABASE_JWT_SECRET = envsecret("SUPABASE_JWT_SECRET")
SUPABASE_JWKS_URL = envstr("SUPABASE_JWKS_URL")
SUPABASE_JWT_AUDIENCE = envstr("SUPABASE_JWT_AUDIENCE", "authenticated")
SUPABASE_JWT_ISSUER = envstr("SUPABASE_JWT_ISSUER")

_authentication_classes = [
    # Token first: its WWW-Authenticate header is what turns "not authenticated" into a 401.
    "rlhf_site.auth.TokenAuthentication",  # DRF's, in one raw query
    # The same API token as "Bearer <token>" (how OpenAI clients send a key); a JWT is left to the next.
    "rlhf_site.auth.BearerTokenAuthentication",
    # Inert unless SUPABASE_JWT_SECRET or SUPABASE_JWKS_URL is set.
    "rlhf_site.auth.SupabaseJWTAuthentication",
    "rest_framework.authentication.SessionAuthentication",
]

API_THROTTLE_RATE = envrate("API_THROTTLE_RATE", "600/min")
# Abuse limits (README "Abuse limits"); counted over rolling periods in the cache, allowing everything while
# it is down.
# Failed sign-ins (/accounts/login/, /admin/login/) per username and per client address.
LOGIN_RATE_PER_USERNAME = envrate("LOGIN_RATE_PER_USERNAME", "10/h")
LOGIN_RATE_PER_ADDRESS = envrate("LOGIN_RATE_PER_ADDRESS", "50/h")
# How many proxies in front of the app append to X-Forwarded-For; 0: the client is REMOTE_ADDR (a
# client-sent X-Forwarded-For is ignored, so it cannot dodge the per-address limit).
NUM_PROXIES = envint("NUM_PROXIES", 0, minimum=0)
API_MAX_BODY_BYTES = envint("API_MAX_BODY_BYTES", 64 * 1024, minimum=1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": _authentication_classes,
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["rlhf_site.parsers.LimitedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # Fails open when the cache (Redis) is unreachable: rlhf_site.throttles.
    "DEFAULT_THROTTLE_CLASSES": ["rlhf_site.throttles.UserRateThrottle"] if API_THROTTLE_RATE else [],
    "DEFAULT_THROTTLE_RATES": {"user": API_THROTTLE_RATE},
    "DEFAULT_PAGINATION_CLASS": "rlhf_site.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "rlhf_site.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "NUM_PROXIES": NUM_PROXIES,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "RLHF platform API",
    "DESCRIPTION": "Feedback, conversations and comparisons. Every error has the shape of `Error`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "PREPROCESSING_HOOKS": ["rlhf_site.schema.drop_trailing_slash_twins"],
    # One name per choice set that several components share.
    "ENUM_NAME_OVERRIDES": {
        "ModelKindEnum": "models_registry.models.ModelVersion.Kind",
        "ModelStatusEnum": "models_registry.models.ModelVersion.Status",
        "TrainingKindEnum": "training.models.TrainingRun.Kind",
        "TrainingStatusEnum": "training.models.TrainingRun.Status",
    },
}

# --- Feedback ----------------------------------------------------------------------------------
FEEDBACK_TAGS = envlist(
    "FEEDBACK_TAGS",
    [
        "helpful",
        "accurate",
        "clear",
        "creative",
        "unhelpful",
        "inaccurate",
        "unclear",
        "harmful",
        "too_long",
        "too_short",
        "off_topic",
    ],
)
FEEDBACK_COMMENT_MAX_LENGTH = envint("FEEDBACK_COMMENT_MAX_LENGTH", 2000, minimum=1)
# A corrected answer ("what it should have said"), sent as feedback's ``correction``.
FEEDBACK_CORRECTION_MAX_LENGTH = envint("FEEDBACK_CORRECTION_MAX_LENGTH", 8000, minimum=1)
IDEMPOTENCY_KEY_TTL_HOURS = envint("IDEMPOTENCY_KEY_TTL_HOURS", 24, minimum=1)
# Insights (feedback.insights): topics of unhappy conversations are clustered from this many newest
# rated answers into this many topics.
INSIGHTS_TOPICS = envint("INSIGHTS_TOPICS", 6, minimum=2, maximum=50)
INSIGHTS_TOPIC_SAMPLE = envint("INSIGHTS_TOPIC_SAMPLE", 5000, minimum=100)

# --- Metrics -----------------------------------------------------------------------------------
# /metrics answers a request bearing METRICS_TOKEN; with DEBUG on, also one from METRICS_ALLOWED_IPS
# (an address allow-list lets everything in behind a proxy on the same host, so not in production).
METRICS_TOKEN = envsecret("METRICS_TOKEN")
METRICS_ALLOWED_IPS = envlist("METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"])
PROMETHEUS_EXPORT_MIGRATIONS = False

# --- Static files, i18n, logging ---------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# WhiteNoise serves static files from the ASGI server itself, straight from the apps' folders, so
# neither a separate web server nor a collectstatic step is needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOG_LEVEL = envstr("LOG_LEVEL", "INFO") or "INFO"
if LOG_LEVEL.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r} is not a logging level.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL.upper()},
}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# --- Chat --------------------------------------------------------------------------------------
CHAT_SIGNUP_ENABLED = envbool("CHAT_SIGNUP_ENABLED", False)
CHAT_MAX_MESSAGE_CHARS = envint("CHAT_MAX_MESSAGE_CHARS", 4000, minimum=1)
CHAT_RATE_PER_MINUTE = envint("CHAT_RATE_PER_MINUTE", 20, minimum=1)
# Feedback and compare frames per user on the chat socket (all their sockets together); past it the
# socket gets an error frame and is closed (code 4429).
CHAT_SOCKET_RATE = envrate("CHAT_SOCKET_RATE", "600/min")
# Tokens that arrive within this many ms of the last one sent go out together, as one WebSocket frame
# (one SSE event for /v1/chat/completions); the first token after a pause goes at once. 0: one per token.
CHAT_TOKEN_BATCH_MS = envfloat("CHAT_TOKEN_BATCH_MS", 5.0, minimum=0.0, maximum=1000.0)
# An answer streaming in a server process is marked alive every CHAT_HEARTBEAT_SECONDS; one still
# streaming with no sign of life for CHAT_STALE_AFTER_SECONDS (its process was killed or restarted) is
# stored as failed, with the steps written before, by the reaper beat runs every CHAT_REAP_EVERY_SECONDS.
CHAT_HEARTBEAT_SECONDS = envfloat("CHAT_HEARTBEAT_SECONDS", 15.0, minimum=0.01)
CHAT_STALE_AFTER_SECONDS = envint("CHAT_STALE_AFTER_SECONDS", 120, minimum=max(1, int(3 * CHAT_HEARTBEAT_SECONDS)))
CHAT_REAP_EVERY_SECONDS = envint("CHAT_REAP_EVERY_SECONDS", 60, minimum=1)
# Threads per server process that serve the sync HTTP views (everything but /v1/; rlhf_site.asgi), and
# threads that run the chat socket's and the streamed answers' database calls (core.asyncdb). Each may
# hold a pooled connection at once: half the pool each by default, and a check warns when together
# they exceed it. SQLite takes one writer at a time: one database thread there.
_pool_size = (DATABASES["default"].get("OPTIONS", {}).get("pool") or {}).get("max_size", 20)
_sqlite = DATABASES["default"]["ENGINE"].endswith("sqlite3")
HTTP_THREADS = envint("HTTP_THREADS", max(1, _pool_size // 2), minimum=1)
ASYNC_DB_THREADS = envint("ASYNC_DB_THREADS", 1 if _sqlite else max(1, _pool_size - HTTP_THREADS), minimum=1)
# The longest answer an application may log (POST /api/assistant/conversations and .../turns).
EXTERNAL_ANSWER_MAX_CHARS = envint("EXTERNAL_ANSWER_MAX_CHARS", 32_000, minimum=1)
# How long a ticket from POST /api/assistant/ws-ticket may wait to open the chat socket (single use).
WS_TICKET_SECONDS = envint("WS_TICKET_SECONDS", 30, minimum=1, maximum=3600)
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# --- The inference API (/v1/, OpenAI-compatible; feedback.inference) ---------------------------
# Who may call it: an API token or a Supabase JWT, each as "Authorization: Bearer ..." (no session:
# the endpoints take no CSRF token).
INFERENCE_AUTHENTICATION_CLASSES = [
    "rlhf_site.auth.TokenAuthentication",
    "rlhf_site.auth.BearerTokenAuthentication",
    "rlhf_site.auth.SupabaseJWTAuthentication",
]
# max_tokens above this is refused (400); none given: this many.
INFERENCE_MAX_TOKENS = envint("INFERENCE_MAX_TOKENS", envint("SERVING_MAX_NEW_TOKENS", 256, minimum=1), minimum=1)
INFERENCE_RATE_PER_MINUTE = envint("INFERENCE_RATE_PER_MINUTE", 60, minimum=1)  # completions per token (429)
INFERENCE_MAX_CONCURRENT_PER_USER = envint("INFERENCE_MAX_CONCURRENT_PER_USER", 4, minimum=1)  # at once (429)
INFERENCE_MAX_BODY_BYTES = envint("INFERENCE_MAX_BODY_BYTES", 256 * 1024, minimum=1024)  # request body (413)
INFERENCE_MAX_PROMPT_CHARS = envint("INFERENCE_MAX_PROMPT_CHARS", 32_000, minimum=1)  # all messages' text (400)

# --- Serving the live policy (models_registry.serving) ----------------------------------------
SERVING_MAX_NEW_TOKENS = envint("SERVING_MAX_NEW_TOKENS", 256, minimum=1)
SERVING_TEMPERATURE = envfloat("SERVING_TEMPERATURE", 0.7, minimum=0.0)  # 0: greedy
SERVING_TOP_P = envfloat("SERVING_TOP_P", 0.95, minimum=0.0)
SERVING_MAX_CONCURRENT = envint("SERVING_MAX_CONCURRENT", 2, minimum=1)
SERVING_LIVE_CHECK_SECONDS = envint("SERVING_LIVE_CHECK_SECONDS", 2, minimum=0)
# A starting server process spends at most this long compiling the chat's templates and loading the
# live policy before it takes connections (rlhf_site.lifespan); 0: none, the first chats do it.
WEB_WARM_UP_SECONDS = envfloat("WEB_WARM_UP_SECONDS", 60.0, minimum=0.0)
SERVING_TOKEN_TIMEOUT_SECONDS = envint("SERVING_TOKEN_TIMEOUT_SECONDS", 120, minimum=1)
SERVING_OPENAI_API_KEY = envsecret("SERVING_OPENAI_API_KEY")
# Hosts an openai-backend version may point at (host, host:port, *.domain); empty: none. Users'
# conversations and SERVING_OPENAI_API_KEY are only ever sent there (models_registry.endpoints).
SERVING_OPENAI_ALLOWED_HOSTS = envlist("SERVING_OPENAI_ALLOWED_HOSTS", [])
SERVING_OPENAI_TIMEOUT_SECONDS = envint("SERVING_OPENAI_TIMEOUT_SECONDS", 60, minimum=1)

# --- The registry: four-eyes and webhooks ------------------------------------------------------
# Under four-eyes, whoever requested a version may not approve it, and whoever approved it may not
# deploy it, start its canary or promote it. On by default outside DEBUG.
REGISTRY_FOUR_EYES = envbool("REGISTRY_FOUR_EYES", not DEBUG)
# Every deployment event and monitor decision is POSTed to each of these, signed with the secret.
REGISTRY_WEBHOOK_URLS = envlist("REGISTRY_WEBHOOK_URLS", [])
REGISTRY_WEBHOOK_SECRET = envsecret("REGISTRY_WEBHOOK_SECRET")
REGISTRY_WEBHOOK_TIMEOUT_SECONDS = envfloat("REGISTRY_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# The outbox (models_registry.webhooks): pending deliveries with no task are queued again every
# REGISTRY_WEBHOOK_SWEEP_SECONDS (a task lost once queued: neither queued nor tried for
# REGISTRY_WEBHOOK_REQUEUE_AFTER_SECONDS, longer than a retry waits); delivered and failed ones are deleted
# after REGISTRY_WEBHOOK_KEEP_DAYS.
REGISTRY_WEBHOOK_SWEEP_SECONDS = envint("REGISTRY_WEBHOOK_SWEEP_SECONDS", 60, minimum=1)
REGISTRY_WEBHOOK_REQUEUE_AFTER_SECONDS = envint("REGISTRY_WEBHOOK_REQUEUE_AFTER_SECONDS", 3600, minimum=900)
REGISTRY_WEBHOOK_KEEP_DAYS = envint("REGISTRY_WEBHOOK_KEEP_DAYS", 30, minimum=1)
if REGISTRY_WEBHOOK_URLS and not REGISTRY_WEBHOOK_SECRET:
    raise ImproperlyConfigured("REGISTRY_WEBHOOK_URLS is set: set REGISTRY_WEBHOOK_SECRET too, to sign the webhooks.")

# --- The monitor (training.monitor): canaries and deploys, decided by an always-valid sequential test
MONITOR_EVERY_SECONDS = envint("MONITOR_EVERY_SECONDS", 300, minimum=1)
MONITOR_AUTOMATIC_ACTIONS = envbool("MONITOR_AUTOMATIC_ACTIONS", True)  # off: decisions are advice only
MONITOR_ALPHA = envfloat("MONITOR_ALPHA", 0.05, minimum=0.001, maximum=0.5)
MONITOR_MARGIN = envfloat("MONITOR_MARGIN", 0.02, minimum=0.0, maximum=0.5)
MONITOR_MIXTURE_SCALE = envfloat("MONITOR_MIXTURE_SCALE", 0.1, minimum=0.001, maximum=1.0)
MONITOR_MIN_RATINGS = envint("MONITOR_MIN_RATINGS", 100, minimum=1)
MONITOR_MIN_VOTES = envint("MONITOR_MIN_VOTES", 30, minimum=1)
MONITOR_MAX_RATINGS_PER_USER = envint("MONITOR_MAX_RATINGS_PER_USER", 20, minimum=1)
MONITOR_BASELINE_RATINGS = envint("MONITOR_BASELINE_RATINGS", 1000, minimum=1)
MONITOR_DEPLOY_HORIZON = envint("MONITOR_DEPLOY_HORIZON", 3000, minimum=1)

# --- Training (training app) ------------------------------------------------------------------
TRAINING_ARTIFACTS_DIR = Path(envstr("TRAINING_ARTIFACTS_DIR", str(VAR_DIR / "artifacts")) or "")
TRAINING_DATASETS_DIR = Path(envstr("TRAINING_DATASETS_DIR", str(VAR_DIR / "datasets")) or "")
TRAINING_HEARTBEAT_SECONDS = envfloat("TRAINING_HEARTBEAT_SECONDS", 5.0, minimum=0.1)
# A running run whose heartbeat is older than this is failed by the reaper (its worker died).
TRAINING_STALE_AFTER_SECONDS = envint("TRAINING_STALE_AFTER_SECONDS", 300, minimum=1)
# Celery time limits of a run (enforced by the prefork pool): the soft one fails the run cleanly.
TRAINING_SOFT_TIME_LIMIT_SECONDS = envint("TRAINING_SOFT_TIME_LIMIT_SECONDS", 6 * 3600, minimum=1)
TRAINING_TIME_LIMIT_SECONDS = envint("TRAINING_TIME_LIMIT_SECONDS", 6 * 3600 + 600, minimum=1)
if TRAINING_TIME_LIMIT_SECONDS <= TRAINING_SOFT_TIME_LIMIT_SECONDS:
    raise ImproperlyConfigured("TRAINING_TIME_LIMIT_SECONDS must be above TRAINING_SOFT_TIME_LIMIT_SECONDS.")
TRAINING_LOG_TAIL_LINES = envint("TRAINING_LOG_TAIL_LINES", 200, minimum=1)
# Processes a run trains in (torch.distributed.run, one per GPU on a GPU node; gloo on a CPU): 1 trains
# in the worker's own process. The training.ml.launch docstring and README "Training on several
# processes or GPUs" say how the work is split.
TRAINING_PROCESSES = envint("TRAINING_PROCESSES", 1, minimum=1)
TRAINING_REAP_EVERY_SECONDS = envint("TRAINING_REAP_EVERY_SECONDS", 60, minimum=1)
CELERY_TASK_ROUTES = {"training.tasks.training_run_execute": {"queue": "training"}}
# --- The improvement cycle (training.cycle) ---------------------------------------------------------
CYCLE_POLICY_KIND = envchoice("CYCLE_POLICY_KIND", "ppo", ["ppo", "dpo", "kto"])  # scheduled cycles
CYCLE_AUTO_APPROVE = envbool("CYCLE_AUTO_APPROVE", False)  # the system approves when every gate passed
CYCLE_CANARY_SHARE = envfloat("CYCLE_CANARY_SHARE", 0.1, minimum=0.01, maximum=0.99)
CYCLE_SCHEDULE = envcrontab("CYCLE_SCHEDULE")  # e.g. "0 3 * * 1" (Mondays 03:00 UTC); none: off
CYCLE_EVERY_NEW_RATINGS = envint("CYCLE_EVERY_NEW_RATINGS", 0, minimum=0)  # 0: off
CYCLE_SWEEP_SECONDS = envint("CYCLE_SWEEP_SECONDS", 30, minimum=1)
# The gates
CYCLE_MIN_NEW_RATINGS = envint("CYCLE_MIN_NEW_RATINGS", 100, minimum=0)
CYCLE_MIN_REWARD_ACCURACY = envfloat("CYCLE_MIN_REWARD_ACCURACY", 0.7, minimum=0.0, maximum=1.0)
CYCLE_MIN_HELDOUT_PAIRS = envint("CYCLE_MIN_HELDOUT_PAIRS", 20, minimum=1)
CYCLE_MAX_REWARD_ECE = envfloat("CYCLE_MAX_REWARD_ECE", 0.2, minimum=0.0, maximum=1.0)
CYCLE_MIN_WIN_RATE = envfloat("CYCLE_MIN_WIN_RATE", 0.55, minimum=0.0, maximum=1.0)
CYCLE_MIN_EVAL_PROMPTS = envint("CYCLE_MIN_EVAL_PROMPTS", 16, minimum=1)
CYCLE_MAX_KL = envfloat("CYCLE_MAX_KL", 20.0, minimum=0.0)
CYCLE_MIN_LENGTH_RATIO = envfloat("CYCLE_MIN_LENGTH_RATIO", 0.5, minimum=0.0)
CYCLE_MAX_LENGTH_RATIO = envfloat("CYCLE_MAX_LENGTH_RATIO", 2.0, minimum=0.0)
# The runs' configs in a cycle (JSON {"reward": {...}, "policy": {...}}), under what a cycle is given.
CYCLE_RUN_DEFAULTS = envjson(
    "CYCLE_RUN_DEFAULTS",
    # A quarter of the pairs held out: enough for CYCLE_MIN_HELDOUT_PAIRS from a hundred pairs.
    {"reward": {"test_fraction": 0.25}, "policy": {}},
)
CELERY_BEAT_SCHEDULE["sweep-cycles"] = {"task": "training.tasks.cycles_sweep", "schedule": float(CYCLE_SWEEP_SECONDS)}
if CYCLE_SCHEDULE is not None:
    CELERY_BEAT_SCHEDULE["cycle-on-schedule"] = {"task": "training.tasks.cycle_scheduled", "schedule": CYCLE_SCHEDULE}

CELERY_BEAT_SCHEDULE["monitor-versions"] = {
    "task": "training.tasks.monitor_versions",
    "schedule": float(MONITOR_EVERY_SECONDS),
}
CELERY_BEAT_SCHEDULE["sweep-webhook-outbox"] = {
    "task": "models_registry.tasks.webhook_outbox_sweep",
    "schedule": float(REGISTRY_WEBHOOK_SWEEP_SECONDS),
}
CELERY_BEAT_SCHEDULE["reap-stale-answers"] = {
    "task": "feedback.tasks.stale_answers_reap",
    "schedule": float(CHAT_REAP_EVERY_SECONDS),
}
CELERY_BEAT_SCHEDULE["reap-stale-training-runs"] = {
    "task": "training.tasks.training_runs_reap",
    "schedule": float(TRAINING_REAP_EVERY_SECONDS),
}
