from django.apps import AppConfig


class SessionsAppConfig(AppConfig):
    verbose_name = "Machines and sessions"
    name = "sessions_app"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Removing a member is organizations' action; what the person held here ends in this app.
        from organizations.signals import member_removed

        from . import actions, signals  # noqa: F401 (signals connects the usage rollup's receivers)

        member_removed.connect(actions.end_what_a_removed_member_holds, dispatch_uid="sessions_app.end_sessions")
