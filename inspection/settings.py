"""Loupe settings. Every value comes from the environment (see .env.example)."""

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# what the single-machine run writes: database, media, secret key, admin password, static files
VAR_DIR = Path(env("LOUPE_VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)


def _local_secret_key() -> str:
    """The single-machine default: a random key made once and kept in var/secret-key.txt."""
    import secrets

    path = VAR_DIR / "secret-key.txt"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env("SECRET_KEY", default="") or _local_secret_key()
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- HTTPS (behind a TLS-terminating proxy, or gunicorn with certificates) -------------------
# LOUPE_HTTPS=true switches on everything `check --deploy` asks for; each setting can also be
# set on its own. Off by default: the one-machine setup serves plain HTTP on localhost.
LOUPE_HTTPS = env.bool("LOUPE_HTTPS", default=False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=LOUPE_HTTPS)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=LOUPE_HTTPS)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=LOUPE_HTTPS)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000 if LOUPE_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=LOUPE_HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# the header a proxy sets to say the client's request was HTTPS, e.g. "X-Forwarded-Proto: https"
_proxy_header = env("LOUPE_PROXY_SSL_HEADER", default="")
if _proxy_header:
    _name, _, _value = _proxy_header.partition(":")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _name.strip().upper().replace("-", "_"), _value.strip())

# Content-Security-Policy (django-csp): scripts only from Loupe itself (the few inline ones carry
# the request's nonce), no plugins, no framing by other sites. Styles may be inline: the viewer
# and the annotation layer set them.
from csp.constants import NONCE, NONE, SELF  # noqa: E402

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, "'unsafe-inline'"],
        "img-src": [SELF, "data:", "blob:"],
        "connect-src": [SELF],
        "font-src": [SELF, "data:"],
        "worker-src": [SELF, "blob:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [SELF],
    }
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "inspection",
    "annotations",
    "workers.tasks",  # job bodies: registers every job kind and maintenance hook at start
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
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "inspection.urls"
WSGI_APPLICATION = "inspection.wsgi.application"

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
            ],
        },
    },
]

# Embedded default: SQLite under var/. Production and CI: DATABASE_URL=postgres://...
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'loupe.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file (not :memory:) so that a Celery worker process sees what tests write.
    # One file per test run (two runs in one checkout must not share it).
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30
    # a transaction takes the write lock when it begins: one that read first and then wrote
    # failed at once with "database is locked" when another process (a worker, a station) was
    # writing, instead of waiting its turn
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
else:
    # A server database keeps each web thread's connection between requests: a new PostgreSQL
    # connection per request (Django's default) forks a server process every time
    # (docs/benchmarks.md, "API under load"). Checked before reuse, so a restarted database
    # costs one failed check, not an error.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=300)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    (
        "vendor/openseadragon",
        BASE_DIR / "node_modules" / "openseadragon" / "build" / "openseadragon",
    ),
    ("vendor/annotorious", BASE_DIR / "node_modules" / "@annotorious" / "openseadragon" / "dist"),
]
WHITENOISE_USE_FINDERS = True

MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(VAR_DIR / "media")))
MEDIA_URL = "media/"
# S3-compatible object storage (MinIO, Ceph, AWS): STORAGE_BACKEND=storages.backends.s3.S3Storage
# and these; django-storages reads them. Files are private and served through Loupe (which
# checks the project role), so no public URLs are made.
AWS_STORAGE_BUCKET_NAME = env("AWS_STORAGE_BUCKET_NAME", default=None)
AWS_S3_ENDPOINT_URL = env("AWS_S3_ENDPOINT_URL", default=None)
AWS_S3_REGION_NAME = env("AWS_S3_REGION_NAME", default=None)
AWS_ACCESS_KEY_ID = env("AWS_ACCESS_KEY_ID", default=None)
AWS_SECRET_ACCESS_KEY = env("AWS_SECRET_ACCESS_KEY", default=None)
AWS_DEFAULT_ACL = None
AWS_QUERYSTRING_AUTH = True
AWS_S3_FILE_OVERWRITE = False

STORAGES = {
    "default": {
        "BACKEND": env("STORAGE_BACKEND", default="django.core.files.storage.FileSystemStorage")
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Uploads: large bodies stream to temporary files, never into memory.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = env.int("LOUPE_MAX_FILES_PER_REQUEST", default=1000)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first so that a script without credentials gets 401 + WWW-Authenticate.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "inspection.api.pagination.Paging",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "inspection.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Loupe API",
    "DESCRIPTION": "Projects, images, labels and background jobs of Loupe.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # the default hook, and the errors every operation can answer (inspection/api/schema.py)
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "inspection.api.schema.error_responses",
    ],
    # several models have a "kind" or a "status": one schema name each
    "ENUM_NAME_OVERRIDES": {
        "ShapeKindEnum": "annotations.models.Annotation.Kind",
        "ModelKindEnum": "inspection.models.ModelVersion.Kind",
        "ImageStatusEnum": "inspection.models.Image.Status",
        "JobStatusEnum": "inspection.models.Job.Status",
        "ModelStatusEnum": "inspection.models.ModelVersion.Status",
        "SuggestionStatusEnum": "annotations.models.Suggestion.Status",
        "StationStatusEnum": "inspection.models.Station.Status",
        "VerdictEnum": "inspection.models.StationResult.Verdict",
        "AnomalyArchitectureEnum": "inspection.services.inspections.ARCHITECTURES",
        "RegionModeEnum": "inspection.models.InspectionRegion.Mode",
    },
}

# Celery: Redis broker; one job runner (workers/tasks/runner.py).
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
# Counters shared by every web process (sign-in throttling, inspection/throttling.py); short
# timeouts: an unreachable Redis lets the attempt through rather than hanging the login page.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    },
}
# list pages kept in memory until their project's data changes (inspection/listcache.py)
LOUPE_LIST_CACHE = env.bool("LOUPE_LIST_CACHE", default=True)
LOUPE_LOGIN_FAILURES_PER_USER = env.int("LOUPE_LOGIN_FAILURES_PER_USER", default=10)
LOUPE_LOGIN_FAILURES_PER_ADDRESS = env.int("LOUPE_LOGIN_FAILURES_PER_ADDRESS", default=100)
LOUPE_LOGIN_WINDOW_SECONDS = env.int("LOUPE_LOGIN_WINDOW_SECONDS", default=600)
LOUPE_QUEUE_PREFIX = env("LOUPE_QUEUE_PREFIX", default="")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = LOUPE_QUEUE_PREFIX + "cpu"
# A message a dead worker took is handed out again after this many seconds (Redis broker).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("LOUPE_VISIBILITY_TIMEOUT", default=6 * 3600),
}
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
# Periodic housekeeping (inspection.services.maintenance): beat sends one task that runs every
# registered hook (stale jobs, expired export zips...).
LOUPE_MAINTENANCE_SECONDS = env.int("LOUPE_MAINTENANCE_SECONDS", default=60)
CELERY_BEAT_SCHEDULE = {
    "loupe-maintenance": {
        "task": "loupe.maintenance",
        "schedule": LOUPE_MAINTENANCE_SECONDS,
        "options": {"queue": LOUPE_QUEUE_PREFIX + "cpu", "expires": LOUPE_MAINTENANCE_SECONDS},
    }
}

# Loupe's own limits.
LOUPE_MAX_LABELS_PER_REQUEST = env.int("LOUPE_MAX_LABELS_PER_REQUEST", default=5000)
LOUPE_MAX_IMAGE_PIXELS = env.int("LOUPE_MAX_IMAGE_PIXELS", default=100_000_000)
LOUPE_MAX_UPLOAD_BYTES = env.int("LOUPE_MAX_UPLOAD_BYTES", default=512 * 1024 * 1024)
LOUPE_ZIP_MAX_ENTRIES = env.int("LOUPE_ZIP_MAX_ENTRIES", default=20_000)
LOUPE_ZIP_MAX_TOTAL_BYTES = env.int("LOUPE_ZIP_MAX_TOTAL_BYTES", default=8 * 1024**3)
LOUPE_ZIP_MAX_RATIO = env.int("LOUPE_ZIP_MAX_RATIO", default=200)
LOUPE_IMPORT_ROOTS = [Path(p) for p in env.list("LOUPE_IMPORT_ROOTS", default=[])]
LOUPE_JOB_HEARTBEAT_SECONDS = env.int("LOUPE_JOB_HEARTBEAT_SECONDS", default=10)
LOUPE_JOB_STALE_SECONDS = env.int("LOUPE_JOB_STALE_SECONDS", default=120)
LOUPE_JOB_SEND_GRACE_SECONDS = env.int("LOUPE_JOB_SEND_GRACE_SECONDS", default=5)
LOUPE_JOB_MAX_ATTEMPTS = env.int("LOUPE_JOB_MAX_ATTEMPTS", default=3)
# Dataset export zips are deleted this many days after their job finished (0: kept forever).
LOUPE_EXPORT_KEEP_DAYS = env.int("LOUPE_EXPORT_KEEP_DAYS", default=14)
LOUPE_ANY_USER_CAN_CREATE_PROJECTS = env.bool("LOUPE_ANY_USER_CAN_CREATE_PROJECTS", default=True)
LOUPE_TILE_SIZE = env.int("LOUPE_TILE_SIZE", default=254)
LOUPE_THUMBNAIL_SIZE = env.int("LOUPE_THUMBNAIL_SIZE", default=256)
LOUPE_WORKSPACE_POLL_SECONDS = env.int("LOUPE_WORKSPACE_POLL_SECONDS", default=10)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    # libvips logs every thread pool at INFO
    "loggers": {"pyvips": {"level": "WARNING"}},
}
