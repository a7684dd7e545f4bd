"""Settings for the portal: one module, every knob an environment variable (contract/operations.md)."""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)

DEVELOPMENT_SECRET_KEY = "django-insecure-development-key-never-use-in-production"
SECRET_KEY = env("SECRET_KEY", default=DEVELOPMENT_SECRET_KEY)
if not DEBUG and SECRET_KEY == DEVELOPMENT_SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is false.")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Field limits as data-maxlength, never a maxlength that cuts a pasted value (organizations/limits.py).
FORM_RENDERER = "organizations.limits.LimitStatingRenderer"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_tasks_db",
    "axes",
    "organizations",
    "licenses",
    "sessions_app",
    "notifications",
]

MIDDLEWARE = [
    # /healthz and /metrics, answered before the host check and the HTTPS redirect (load balancers and
    # Prometheus ask by address over plain HTTP) and left out of the request metrics.
    "katalon_admin.operations.OperationsEndpointsMiddleware",
    # Request counts and latencies by view: the clock covers every middleware below, and the status
    # counted is the one sent (axes' 429 included).
    "katalon_admin.operations.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, so that it sees a sign-in that axes refused and answers with the sign-in page saying so.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "katalon_admin.urls"
WSGI_APPLICATION = "katalon_admin.wsgi.application"

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
                "organizations.context_processors.organizations",
            ],
            # One time format on every page (organizations/templatetags/portal_time.py).
            "builtins": ["organizations.templatetags.portal_time"],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # The engine API is the hot path: keep connections open between requests. No health check
    # before each request's first query: it is a round trip on every request (an engine call is one
    # or two now), and it only spares the first request of each worker thread after a database restart,
    # which the engine API answers 503 with Retry-After (engines retry) and Django then replaces the
    # broken connection at the end of that request. DATABASE_URL=…?conn_health_checks=true turns it on.
    DATABASES["default"].setdefault("CONN_MAX_AGE", 600)

    def _url_flag(name):
        # django-environ leaves a DATABASE_URL option such as "false" a string, which is truthy.
        value = DATABASES["default"].get(name, False)
        return env.parse_value(value, bool) if isinstance(value, str) else bool(value)

    DATABASES["default"]["CONN_HEALTH_CHECKS"] = _url_flag("CONN_HEALTH_CHECKS")
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    # Behind PgBouncer in transaction pooling, DATABASE_URL ends in ?disable_server_side_cursors=true:
    # a server-side cursor (QuerySet.iterator(), used by the CSV exports) and the engine API's prepared
    # statements (sessions_app/hotpath.py) must stay on one server connection across transactions,
    # which transaction pooling does not promise.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = _url_flag("DISABLE_SERVER_SIDE_CURSORS")
else:
    # SQLite serialises writers; wait for the lock instead of failing with "database is locked",
    # and take the write lock at BEGIN so a read-then-write transaction cannot deadlock.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 20, "transaction_mode": "IMMEDIATE"})

# Django's cache framework holds the engine API's rate-limit counters (sessions_app.ratelimit), so
# counting costs no database write. CACHE_URL=redis://… shares them between every process and host;
# without it each process counts in its own memory and the limits apply per worker process.
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}
if "redis" in CACHES["default"]["BACKEND"].lower():
    # Django's own Redis backend (with the `redis` package), whatever django-environ would pick. A cache
    # that does not answer must cost a request little: the limiter then serves valid keys uncounted.
    CACHES["default"]["BACKEND"] = "django.core.cache.backends.redis.RedisCache"
    CACHES["default"].setdefault("OPTIONS", {})
    CACHES["default"]["OPTIONS"].setdefault("socket_connect_timeout", 0.5)
    CACHES["default"]["OPTIONS"].setdefault("socket_timeout", 0.5)


def _limit(name, default, unit="requests per minute"):
    value = env(name, default=str(default)).strip()
    if not value.isdigit():
        raise ImproperlyConfigured(f"{name} must be 0 (off) or a positive number of {unit}, not {value!r}.")
    return int(value)


# Engine API limits, per minute (0 turns one off): requests per API key, and failed authentications
# per client address. Requests with a valid key never count against their address.


API_RATE_LIMIT = _limit("API_RATE_LIMIT", 12_000)
API_AUTH_FAILURE_LIMIT = _limit("API_AUTH_FAILURE_LIMIT", 60)

# GET /metrics (katalon_admin.operations) answers only `Authorization: Bearer <METRICS_TOKEN>`; without a
# token it is off (404) unless DEBUG, so a production portal never shows its internals by default.
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# Sign-in throttling (django-axes, organizations.throttle): SIGN_IN_FAILURE_LIMIT failed sign-ins for one
# account, or from one client address, lock that account or address out of signing in for
# SIGN_IN_LOCKOUT_MINUTES. Failures are kept in the database (axes' AccessAttempt), so every process and
# host sees the same count without a shared cache. Either at 0 turns the lockout off.
SIGN_IN_FAILURE_LIMIT = _limit("SIGN_IN_FAILURE_LIMIT", 5, unit="failed sign-ins")
SIGN_IN_LOCKOUT_MINUTES = _limit("SIGN_IN_LOCKOUT_MINUTES", 15, unit="minutes")
AXES_ENABLED = SIGN_IN_FAILURE_LIMIT > 0 and SIGN_IN_LOCKOUT_MINUTES > 0
AXES_FAILURE_LIMIT = SIGN_IN_FAILURE_LIMIT
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one alone locks
AXES_COOLOFF_TIME = timedelta(minutes=SIGN_IN_LOCKOUT_MINUTES)
# A lockout lasts its minutes from the failure that caused it: attempts refused meanwhile neither extend
# it (so guessing cannot keep a person out for good) nor count.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A success forgives only the account's own failures from that address (organizations.throttle); axes' own
# reset would also wipe the address's count, letting anyone with one valid account reset their guessing.
AXES_RESET_ON_SUCCESS = False
AXES_CLIENT_IP_CALLABLE = "organizations.audit.client_ip"  # the proxy-aware address the audit log uses
AXES_USERNAME_CALLABLE = "organizations.throttle.attempted_email"
AXES_LOCKOUT_CALLABLE = "organizations.throttle.lockout_response"
AXES_DISABLE_ACCESS_LOG = True  # sign-ins that succeed need no row each; the audit log records what matters
AXES_VERBOSE = False
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out account or address before any check
    "django.contrib.auth.backends.ModelBackend",
]

# Password-reset mails, per hour (organizations.throttle, counted in Django's cache like the API's limits):
# requests from one client address, and requests naming one email address. Past either the form says so
# and sends nothing, the same whether or not the address has an account. 0 turns one off.
PASSWORD_RESET_LIMIT_PER_ADDRESS = _limit("PASSWORD_RESET_LIMIT_PER_ADDRESS", 10, unit="requests per hour")
PASSWORD_RESET_LIMIT_PER_EMAIL = _limit("PASSWORD_RESET_LIMIT_PER_EMAIL", 3, unit="requests per hour")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "organizations.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
# Tests and the run command serve static files without collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_MANIFEST_STRICT = False

# EMAIL_URL in django-environ's form, translated to Django 6.1's MAILERS.
_email = env.email_url("EMAIL_URL", default="consolemail://")
_smtp_options = {
    "host": _email.get("EMAIL_HOST"),
    "port": _email.get("EMAIL_PORT"),
    "username": _email.get("EMAIL_HOST_USER"),
    "password": _email.get("EMAIL_HOST_PASSWORD"),
    "use_tls": _email.get("EMAIL_USE_TLS"),
    "use_ssl": _email.get("EMAIL_USE_SSL"),
    "timeout": 10,
}
MAILERS = {
    "default": {
        "BACKEND": _email["EMAIL_BACKEND"],
        "OPTIONS": {key: value for key, value in _smtp_options.items() if value not in (None, "")}
        if _email["EMAIL_BACKEND"].endswith("smtp.EmailBackend")
        else {},
    }
}
# Without EMAIL_URL mail goes to the console on purpose: invitation and password links are shown
# in the portal too, so an installation without a mail server still works. The deploy check's
# complaint about the console backend is for that default only; a configured EMAIL_URL is checked.
SILENCED_SYSTEM_CHECKS = [] if env("EMAIL_URL", default="") else ["mail.E001"]
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Katalon Admin <noreply@localhost>")

# Mails and webhooks leave through Django's tasks framework, queued in the database itself so that
# nothing but the database is needed; `manage.py db_worker` runs them (README, Production).
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
# Webhooks to loopback and private-network addresses are refused unless this is set
# (notifications.destinations); link-local and cloud metadata addresses are refused always.
WEBHOOK_ALLOW_PRIVATE = env.bool("WEBHOOK_ALLOW_PRIVATE", default=False)
# The portal's address as people reach it, for the links in alert mails (sent by the worker, which
# has no request to read it from).
PORTAL_URL = env("PORTAL_URL", default="http://127.0.0.1:8000").rstrip("/")

# Offline license files are signed with this Ed25519 key (PEM); without it one is generated
# into the database on first use (licenses.signing).
LICENSE_SIGNING_KEY = env("LICENSE_SIGNING_KEY", default="")

# Security baseline. htmx is served from static/, so scripts need nothing but 'self'.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "font-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True  # the token reaches htmx through hx-headers, never JavaScript reading a cookie

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
