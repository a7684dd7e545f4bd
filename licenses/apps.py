from django.apps import AppConfig


class LicensesConfig(AppConfig):
    name = "licenses"
    default_auto_field = "django.db.models.BigAutoField"
