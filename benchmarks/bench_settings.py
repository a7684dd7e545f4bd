"""Settings for the engine API benchmark's server: the product's settings, plus the minimal reference
views of bench_urls. Never used by the product; gunicorn loads it with DJANGO_SETTINGS_MODULE."""

from katalon_admin.settings import *  # noqa: F403

ROOT_URLCONF = "bench_urls"
