"""Django settings, all from the environment (design.md section 10).

Importing them reads only: the environment and, outside production, VAR_DIR/secrets.json
if it exists. The files (VAR_DIR, the SQLite database 0600, STATIC_ROOT, the development
secrets) are made by superimap.platform.prepare, which every entry point runs first."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import warnings
from datetime import timedelta
from pathlib import Path

import environ

from superimap.platform.config import (
    ConfigError,
    dev_secrets_path,
    env_bool,
    env_idle_periods,
    env_int,
    env_int_list,
    env_list,
    env_login_limits,
    env_str,
    read_dev_secrets,
    superimap_env,
    validate_fernet_keys,
    var_dir,
)

BASE_DIR = Path(__file__).resolve().parent.parent

SUPERIMAP_ENV = superimap_env()
PRODUCTION = SUPERIMAP_ENV == "production"
VAR_DIR = var_dir(SUPERIMAP_ENV)

_secrets = {} if PRODUCTION else read_dev_secrets(VAR_DIR)


def _required_secret(name: str) -> str:
    value = env_str(name) or _secrets.get(name, "")
    if not value and PRODUCTION:
        raise ConfigError(name, "is required when SUPERIMAP_ENV=production")
    if not value:
        raise ConfigError(
            name,
            f"is not set and {dev_secrets_path(VAR_DIR)} has none; start through `superimap` "
            "(any command, e.g. `superimap check`, generates development keys there once) "
            "or set it",
        )
    return value


ENCRYPTION_KEYS = validate_fernet_keys("ENCRYPTION_KEY", _required_secret("ENCRYPTION_KEY"))
SECRET_KEY = _required_secret("SECRET_KEY_BASE")
if PRODUCTION and len(SECRET_KEY) < 32:
    raise ConfigError("SECRET_KEY_BASE", "must be at least 32 characters long")

DEBUG = env_bool("DEBUG", False)

# Product settings (spec: "Environment Variables").
MAX_USER_THREADS = env_int("MAX_USER_THREADS", 20000, minimum=1)
NUM_WORKER_THREADS = env_int("NUM_WORKER_THREADS", 5, minimum=1, maximum=200)
MAX_EMAIL_SIZE = env_int("MAX_EMAIL_SIZE", 1024 * 1024, minimum=1024)
TRACER_INTERVAL = env_int("TRACER_INTERVAL", 600, minimum=1)
NUM_TRACERS = env_int("NUM_TRACERS", 3, minimum=0)
POLL_INTERVAL = env_int("POLL_INTERVAL", 60, minimum=1)
# Secondary folders of servers without NOTIFY: STATUS this often (design.md 4.10).
FOLDER_POLL_SECONDS = env_int("FOLDER_POLL_SECONDS", 60, minimum=1, maximum=29 * 60)
# How long one IDLE lasts before it is re-issued (design.md 4.7): RFC 2177 advises at most
# 29 min (RFC 3501's autologout timer is at least 30); 28 leaves a minute for a busy loop.
# IMAP_IDLE_SECONDS sets it per IMAP host ("imap.gmx.net=600,...").
IDLE_REISSUE_SECONDS = env_int("IDLE_REISSUE_SECONDS", 28 * 60, minimum=1, maximum=29 * 60)
IMAP_IDLE_SECONDS = env_idle_periods("IMAP_IDLE_SECONDS", maximum=29 * 60)
ENGINE_LEASE_SECONDS = env_int("ENGINE_LEASE_SECONDS", 60, minimum=2, maximum=3600)
ENGINE_REFRESH_SECONDS = env_int("ENGINE_REFRESH_SECONDS", 5, minimum=1, maximum=60)
# Change events (design.md 4.14) on servers without QRESYNC: the flags of this many of the
# last delivered messages per folder are read again this often (and after an EXPUNGE).
CHANGES_RESYNC_MESSAGES = env_int("CHANGES_RESYNC_MESSAGES", 200, minimum=1, maximum=10000)
CHANGES_RESYNC_SECONDS = env_int("CHANGES_RESYNC_SECONDS", 900, minimum=1, maximum=86400)
# SQLite: WAL pages between two checkpoints (each connection's PRAGMA wal_autocheckpoint;
# ~40 MiB of WAL at 4 KiB pages). The engine's group commit pays for the copy (design.md 4.4).
SQLITE_WAL_AUTOCHECKPOINT = env_int("SQLITE_WAL_AUTOCHECKPOINT", 10000, minimum=0, maximum=1000000)
# Group commit (engine/persister.py): the longest a batch waits for others to share its
# transaction, counted from its arrival; only when two or more are expected meanwhile at the
# recent rate (sync/groupcommit.py), so a lone mail or a low rate is committed at once.
ENGINE_GROUP_COMMIT_MS = env_int("ENGINE_GROUP_COMMIT_MS", 10, minimum=0, maximum=1000)
ENGINE_GROUP_COMMIT_MESSAGES = env_int(
    "ENGINE_GROUP_COMMIT_MESSAGES", 500, minimum=1, maximum=10000
)
# Nodes with a heartbeat this recent share the mailboxes (spec "Scaling": 30 s).
ENGINE_NODE_ALIVE_SECONDS = env_int("ENGINE_NODE_ALIVE_SECONDS", 30, minimum=2, maximum=600)
# Cold start (design.md 8): a starting node claims no unowned mailbox until the live nodes
# have not changed for this long (nodes starting together each claim only their share).
ENGINE_JOIN_SECONDS = env_int("ENGINE_JOIN_SECONDS", 3, minimum=0, maximum=60)
# A stable name: a restarted engine takes its own leases back at once (engine/nodelock.py).
ENGINE_NODE_NAME = env_str("ENGINE_NODE_NAME", socket.gethostname())
if not re.fullmatch(r"[A-Za-z0-9._:@-]{1,100}", ENGINE_NODE_NAME):
    raise ConfigError(
        "ENGINE_NODE_NAME",
        f"must be 1-100 letters, digits or . _ : @ -, got {ENGINE_NODE_NAME!r}",
    )
# Engine processes per box (superimap up, imap-client): 0 = one per core; several are
# named ENGINE_NODE_NAME-1, -2, ... (platform/children.py). Webhook worker processes too.
ENGINE_PROCESSES = env_int("ENGINE_PROCESSES", 0, minimum=0, maximum=64)
WORKER_PROCESSES = env_int("WORKER_PROCESSES", 1, minimum=1, maximum=64)
if len(ENGINE_NODE_NAME) > 97 and ENGINE_PROCESSES != 1:
    raise ConfigError(
        "ENGINE_NODE_NAME",
        "must be at most 97 characters with several engine processes (they add -1, -2, ...)",
    )
if ENGINE_REFRESH_SECONDS * 2 > ENGINE_LEASE_SECONDS:
    raise ConfigError("ENGINE_LEASE_SECONDS", "must be at least twice ENGINE_REFRESH_SECONDS")
WEBHOOK_CONCURRENCY = env_int("WEBHOOK_CONCURRENCY", 200, minimum=1, maximum=10000)
WEBHOOK_TIMEOUT = env_int("WEBHOOK_TIMEOUT", 30, minimum=1, maximum=300)
# Fair sharing (delivery/fairness.py), per worker: POSTs open at once per partner and per
# endpoint (partner and kind); 0 means 60 % / 40 % of WEBHOOK_CONCURRENCY. A slow endpoint
# (a POST open 5 s, or its last attempt took 5 s or got no answer) gets the third.
WEBHOOK_PARTNER_CONCURRENCY = env_int("WEBHOOK_PARTNER_CONCURRENCY", 0, minimum=0)
WEBHOOK_ENDPOINT_CONCURRENCY = env_int("WEBHOOK_ENDPOINT_CONCURRENCY", 0, minimum=0)
WEBHOOK_SLOW_ENDPOINT_CONCURRENCY = env_int("WEBHOOK_SLOW_ENDPOINT_CONCURRENCY", 4, minimum=1)
# A claimed delivery whose worker died is sent again once its lease is over.
WEBHOOK_LEASE_SECONDS = env_int("WEBHOOK_LEASE_SECONDS", WEBHOOK_TIMEOUT + 30, minimum=2)
if WEBHOOK_LEASE_SECONDS <= WEBHOOK_TIMEOUT:
    raise ConfigError("WEBHOOK_LEASE_SECONDS", "must be longer than WEBHOOK_TIMEOUT")
# Workers renew a heartbeat every second; one silent this long is dead, and another worker
# sends its claimed webhooks now (delivery/heartbeat.py) instead of after the lease.
WEBHOOK_WORKER_ALIVE_SECONDS = env_int("WEBHOOK_WORKER_ALIVE_SECONDS", 5, minimum=3, maximum=600)
# /healthz answers 503 when the oldest due, unsent webhook has waited longer than this.
HEALTHZ_BACKLOG_SECONDS = env_int("HEALTHZ_BACKLOG_SECONDS", 300, minimum=10, maximum=86400)
LOG_SUMMARY_SECONDS = env_int("LOG_SUMMARY_SECONDS", 60, minimum=1, maximum=3600)
# Per-minute rollups behind the dashboard's overview charts (superimap/platform/rollups.py) are kept
# this many days.
ROLLUP_RETENTION_DAYS = env_int("ROLLUP_RETENTION_DAYS", 8, minimum=2, maximum=400)
# How often each engine and worker process upserts its current minute's rollup row.
ROLLUP_FLUSH_SECONDS = env_int("ROLLUP_FLUSH_SECONDS", 10, minimum=1, maximum=60)
# How often a worker looks for due deliveries when nothing woke it (new deliveries wake it
# at once: in-process, or through delivery/wakeup.py from an engine in another process).
WEBHOOK_POLL_MS = env_int("WEBHOOK_POLL_MS", 500, minimum=10, maximum=60_000)
# Retries after a failed POST, in seconds: the first send plus one attempt per entry.
# The default (factor 6 from 10 s) spans about 26 hours, so a receiver down overnight
# gets its mail without anyone clicking "retry".
WEBHOOK_RETRY_SCHEDULE = env_int_list(
    "WEBHOOK_RETRY_SCHEDULE", [10, 60, 360, 2160, 12960, 77760], minimum=1, maximum=7 * 86400
)
# An endpoint (partner and kind) is "failing" after this many failed POSTs in a row.
WEBHOOK_FAILING_AFTER = env_int("WEBHOOK_FAILING_AFTER", 5, minimum=1, maximum=1000)
# When a failing endpoint answers again, its failed deliveries of this many hours are sent
# again, oldest first, at most WEBHOOK_AUTO_REPLAY_RATE per second (0 hours: off).
WEBHOOK_AUTO_REPLAY_HOURS = env_int("WEBHOOK_AUTO_REPLAY_HOURS", 72, minimum=0, maximum=24 * 90)
WEBHOOK_AUTO_REPLAY_RATE = env_int("WEBHOOK_AUTO_REPLAY_RATE", 50, minimum=1, maximum=10000)
# Replay and retry (API and dashboard) re-queue at most this many deliveries of a partner
# at once, refilled at this many per second (delivery/replaylimit.py): 429 + Retry-After.
WEBHOOK_REPLAY_BURST = env_int("WEBHOOK_REPLAY_BURST", 1000, minimum=1, maximum=10_000_000)
WEBHOOK_REPLAY_PER_SECOND = env_int("WEBHOOK_REPLAY_PER_SECOND", 20, minimum=1, maximum=100_000)
# A 429's Retry-After is honoured up to this many seconds.
WEBHOOK_RETRY_AFTER_MAX = env_int("WEBHOOK_RETRY_AFTER_MAX", 3600, minimum=1, maximum=86400)
# Payload bodies of delivered new_mail webhooks are purged after this many days, failed
# ones after WEBHOOK_FAILED_RETENTION_DAYS; rows and attempts stay.
WEBHOOK_RETENTION_DAYS = env_int("WEBHOOK_RETENTION_DAYS", 7, minimum=1, maximum=3650)
WEBHOOK_FAILED_RETENTION_DAYS = env_int(
    "WEBHOOK_FAILED_RETENTION_DAYS", 30, minimum=1, maximum=3650
)
if WEBHOOK_FAILED_RETENTION_DAYS < WEBHOOK_RETENTION_DAYS:
    raise ConfigError("WEBHOOK_FAILED_RETENTION_DAYS", "must be at least WEBHOOK_RETENTION_DAYS")
# include_parsed: text and html bodies are each cut at this many characters.
WEBHOOK_PARSED_MAX_CHARS = env_int(
    "WEBHOOK_PARSED_MAX_CHARS", 100_000, minimum=1000, maximum=10_000_000
)
# Webhook URLs resolving to loopback, private, link-local or reserved addresses are refused
# (at save time and at connect time) unless this is on; it is on outside production.
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", not PRODUCTION)
# The loopback test provider skips TLS verification: off unless asked for (or under tests).
ALLOW_LOOPBACK_IMAP = env_bool("ALLOW_LOOPBACK_IMAP", SUPERIMAP_ENV == "test")
# Login rate limits (imapclient/ratelimit.py): token buckets per mailbox and per server host.
IMAP_LOGIN_BURST_PER_MAILBOX = env_int("IMAP_LOGIN_BURST_PER_MAILBOX", 5, minimum=1)
IMAP_LOGIN_INTERVAL_PER_MAILBOX = env_int("IMAP_LOGIN_INTERVAL_PER_MAILBOX", 30, minimum=1)
IMAP_LOGIN_BURST_PER_HOST = env_int("IMAP_LOGIN_BURST_PER_HOST", 500, minimum=1)
IMAP_LOGINS_PER_SECOND_PER_HOST = env_int("IMAP_LOGINS_PER_SECOND_PER_HOST", 50, minimum=1)
# A chosen backfill (design.md 4.12): existing mail sent as new_mail at most this many
# messages a second per mailbox and per server host (engine/backfill.py).
BACKFILL_RATE_PER_MAILBOX = env_int("BACKFILL_RATE_PER_MAILBOX", 20, minimum=1, maximum=10000)
BACKFILL_RATE_PER_HOST = env_int("BACKFILL_RATE_PER_HOST", 200, minimum=1, maximum=100000)
# Per host (or "loopback", "private"): "host=burst/rate,..." over the built-in limits of
# imapclient/ratelimit.py (loopback and private addresses: self-hosted servers, benches).
IMAP_LOGIN_LIMITS = env_login_limits("IMAP_LOGIN_LIMITS")
# Partners choose PLAIN connections' imap_host/smtp_host: in production refuse hosts that
# resolve to loopback, private, link-local or reserved addresses (superimap.platform.netguard).
IMAP_ALLOW_PRIVATE_HOSTS = env_bool("IMAP_ALLOW_PRIVATE_HOSTS", not PRODUCTION)
_listen = f"http://{env_str('HOST', '127.0.0.1')}:{env_str('PORT', '8000')}"
PUBLIC_URL = env_str("PUBLIC_URL", _listen).rstrip("/")
LOG_FORMAT = env_str("LOG_FORMAT", "text").lower()
if LOG_FORMAT not in {"text", "json"}:
    raise ConfigError("LOG_FORMAT", f"must be text or json, got {LOG_FORMAT!r}")
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ConfigError(
        "LOG_LEVEL", f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {LOG_LEVEL!r}"
    )
METRICS_TOKEN = env_str("METRICS_TOKEN")
METRICS_PORT = env_int("METRICS_PORT", 0, minimum=0, maximum=65535)

ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"]
)
if PRODUCTION and not ALLOWED_HOSTS:
    raise ConfigError("ALLOWED_HOSTS", "is required when SUPERIMAP_ENV=production")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [PUBLIC_URL])
# Reverse proxies whose X-Forwarded-For/-Proto headers are believed (IPs or CIDRs; default
# none): the client address (login lockout, logs) and https come from them only.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ConfigError(
            "TRUSTED_PROXIES", f"must be IP addresses or networks, got {_proxy!r}"
        ) from None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    # django-ninja's own copies of Swagger UI (static files, templates): the API docs load
    # from this origin, as the CSP (superimap.platform.security) requires, never from a CDN.
    "ninja",
    "superimap.partners",
    "superimap.mailboxes",
    "superimap.delivery",
    "superimap.engine",
    "superimap.tracers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "superimap.platform.security.ContentSecurityPolicyMiddleware",
    "superimap.api.errors.ApiJsonErrorsMiddleware",
    "superimap.api.errors.ApiBodyLimitMiddleware",
    "superimap.api.params.RailsParamsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
    "superimap.dashboard_tz.DashboardTimeZoneMiddleware",
]

ROOT_URLCONF = "superimap.urls"
ASGI_APPLICATION = "superimap.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "superimap" / "templates"],
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


def _database(url: str) -> dict:
    try:
        with warnings.catch_warnings():
            # Unknown schemes are reported below as one ConfigError line, not a warning too.
            warnings.simplefilter("ignore", UserWarning)
            config = environ.Env.db_url_config(url)
    except Exception as exc:  # django-environ raises several types for bad URLs
        raise ConfigError("DATABASE_URL", f"cannot be parsed: {exc}") from None
    engine = config.get("ENGINE", "")
    if engine == "django.db.backends.sqlite3":
        # Django's backend plus a write gate between processes (platform/sqlite3/base.py).
        config["ENGINE"] = "superimap.platform.sqlite3"
        name = config["NAME"]
        if name not in ("", ":memory:") and not Path(name).is_absolute():
            name = str((BASE_DIR / name).resolve())
        config["NAME"] = name
        if name and name != ":memory:":
            # Only VAR_DIR is made on demand: a mistyped folder is an error, not a new,
            # empty database somewhere else (README "Configuration").
            folder = Path(name).parent
            if folder != VAR_DIR and not folder.is_dir():
                raise ConfigError(
                    "DATABASE_URL",
                    f"the folder of the SQLite file {name} does not exist; create it first "
                    "(only VAR_DIR is created automatically)",
                )
        config["OPTIONS"] = {
            # WAL lets readers go on while one writer commits; IMMEDIATE takes the write
            # lock at BEGIN so concurrent writers queue instead of failing mid-transaction.
            # The WAL is copied back into the database every SQLITE_WAL_AUTOCHECKPOINT
            # pages, not SQLite's 1,000: at 1,000 mails/s the engine's group commit ran that
            # copy every ~7 groups (a read and a write per page, an fsync), a third of its
            # file syscalls; in 10,000 pages the same hot pages are copied once, not 10 times.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
            f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT};",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
        # Keep connections: a new one per DbPool call (CONN_MAX_AGE=0) costs the engine
        # ~3 ms of CPU per persist (connect, PRAGMAs, schema), half of the persist itself.
        config.setdefault("CONN_MAX_AGE", 600)
        # Tests use a file, not :memory:, so the engine's DB threads share one database.
        # One file per test process, so parallel runs never share a database.
        config["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
    elif engine == "django.db.backends.postgresql":
        config.setdefault("CONN_MAX_AGE", 60)
        config.setdefault("CONN_HEALTH_CHECKS", True)
        # A transaction left open by a frozen process (SIGSTOP) holds its rows' locks until
        # it ends; the other nodes could not free that node (design.md 8). PostgreSQL ends
        # such a session after the lease: none of ours waits idle inside a transaction.
        idle = ENGINE_LEASE_SECONDS * 1000
        options = config.setdefault("OPTIONS", {})
        options.setdefault("options", f"-c idle_in_transaction_session_timeout={idle}")
    else:
        raise ConfigError("DATABASE_URL", f"must be a sqlite:// or postgresql:// URL, got {url!r}")
    return config


DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'superimap.sqlite3'}")
DATABASES = {"default": _database(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# Lockout (spec: "Accounts are locked for an hour after three invalid password attempts").
AXES_FAILURE_LIMIT = 3
AXES_COOLOFF_TIME = timedelta(hours=1)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_ENABLE_ADMIN = False  # lockout internals are no operator's business (issue 17)
# A page that says for how long, and the command that unlocks (superimap.lockout).
AXES_LOCKOUT_CALLABLE = "superimap.lockout.lockout_response"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# The dashboard shows times in this zone (an IANA name, e.g. Europe/Paris), to the second;
# everything stored and the API stay in UTC.
DASHBOARD_TIME_ZONE = env_str("DASHBOARD_TIME_ZONE", "UTC")
FORMAT_MODULE_PATH = ["superimap.formats"]
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"  # made by superimap.platform.prepare (WhiteNoise wants it)
# WhiteNoise serves files through a sync iterator under ASGI; that is fine for admin assets.
warnings.filterwarnings(
    "ignore", message="StreamingHttpResponse must consume synchronous iterators"
)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Request bodies are counted while they arrive (superimap.frontdoor) and refused with 413
# past these limits: API bodies are small JSON documents; dashboard and connect forms get
# more room. Django's own limit is the larger one, so it never fires first.
API_BODY_LIMIT = env_int("API_BODY_LIMIT", 256 * 1024, minimum=1024)
FORM_BODY_LIMIT = env_int("FORM_BODY_LIMIT", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(API_BODY_LIMIT, FORM_BODY_LIMIT)
# What a request without credentials (no valid API key outside its body, no staff session)
# may hold: its body up to ANONYMOUS_BODY_LIMIT (the login form, the connect pages, a body
# carrying `api_key`), and all such bodies together up to ANONYMOUS_BODY_MEMORY (503 past
# it). Paths that take no body (anything but /api/, /admin/, /connect/, /disconnect/) read
# none. A body must arrive within WEB_BODY_TIMEOUT seconds, a request head within
# WEB_HEADER_TIMEOUT and WEB_MAX_HEADER_BYTES; at most WEB_MAX_CONNECTIONS are open at once.
ANONYMOUS_BODY_LIMIT = env_int("ANONYMOUS_BODY_LIMIT", 16 * 1024, minimum=1024)
ANONYMOUS_BODY_MEMORY = env_int("ANONYMOUS_BODY_MEMORY", 8 * 1024 * 1024, minimum=64 * 1024)
if ANONYMOUS_BODY_LIMIT > ANONYMOUS_BODY_MEMORY:
    raise ConfigError("ANONYMOUS_BODY_LIMIT", "must not exceed ANONYMOUS_BODY_MEMORY")
WEB_BODY_TIMEOUT = env_int("WEB_BODY_TIMEOUT", 30, minimum=1, maximum=3600)
WEB_HEADER_TIMEOUT = env_int("WEB_HEADER_TIMEOUT", 10, minimum=1, maximum=600)
WEB_MAX_HEADER_BYTES = env_int("WEB_MAX_HEADER_BYTES", 16 * 1024, minimum=1024, maximum=1 << 20)
WEB_MAX_CONNECTIONS = env_int("WEB_MAX_CONNECTIONS", 1000, minimum=1, maximum=100_000)

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # No SECURE_PROXY_SSL_HEADER: Django would believe X-Forwarded-Proto from anyone.
    # uvicorn sets the scheme from it, for TRUSTED_PROXIES only (runtime.web_config).
    SECURE_HSTS_SECONDS = 31536000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {
            "()": "superimap.platform.logs.TextFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {"()": "superimap.platform.logs.JsonFormatter"},
    },
    "filters": {"short_client_errors": {"()": "superimap.platform.logs.ShortClientErrors"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["short_client_errors"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own handlers (a console one under DEBUG, mail_admins) would write its
        # records a second time, unescaped: they go to the root handler only.
        "django": {"handlers": [], "level": "INFO"},
        "django.db.backends": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
        "uvicorn.access": {"level": "WARNING"},
    },
}
