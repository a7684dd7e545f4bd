from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from organizations import audit

        from .events import on_audit_recorded

        # Every audited change below this app reaches it here, inside the change's transaction.
        audit.recorded.connect(on_audit_recorded, dispatch_uid="notifications.events")
