from django.urls import path

from organizations.urls import pending

urlpatterns = [path("o/<str:org_id>/audit/", pending, name="audit_log")]
