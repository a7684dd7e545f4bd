from django.apps import AppConfig


class LicensesConfig(AppConfig):
    name = "licenses"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Removing a member is organizations' action; what the person held here ends in this app.
        from organizations.signals import member_removed

        from . import actions

        member_removed.connect(actions.revoke_seats_of_removed_member, dispatch_uid="licenses.revoke_seats")
