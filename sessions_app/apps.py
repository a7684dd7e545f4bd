from django.apps import AppConfig


class SessionsAppConfig(AppConfig):
    verbose_name = "Machines and sessions"
    name = "sessions_app"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import signals  # noqa: F401 (connects the receivers)
