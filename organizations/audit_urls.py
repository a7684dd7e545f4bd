from django.urls import path

from . import audit_views

urlpatterns = [
    path("o/<slug:org_id>/audit/", audit_views.audit_log, name="audit_log"),
    path("o/<slug:org_id>/audit/events.csv", audit_views.audit_export, name="audit_export"),
]
