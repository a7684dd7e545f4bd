"""Settings for the portal as the reliability proofs serve it in gunicorn (tests/servers.py): the
production settings, with static files served from their source as the suite's own settings do
(tests/conftest.py), since a test run has no collectstatic manifest."""

from katalon_admin.settings import *  # noqa: F403

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
