from django.apps import AppConfig


class OrganizationsConfig(AppConfig):
    name = "organizations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from axes.signals import user_locked_out
        from django.contrib.auth.signals import user_logged_in

        from . import throttle

        user_locked_out.connect(throttle.on_locked_out, dispatch_uid="organizations.throttle.locked_out")
        user_logged_in.connect(throttle.forgive_own_failures, dispatch_uid="organizations.throttle.forgive")
