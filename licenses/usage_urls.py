from django.urls import path

from . import usage_views

urlpatterns = [
    path("o/<slug:org_id>/usage/", usage_views.usage, name="usage"),
    path("o/<slug:org_id>/usage/sessions.csv", usage_views.usage_export, name="usage_export"),
    path("my-licenses/", usage_views.my_licenses, name="my_licenses"),
    path("my-licenses/sessions/<slug:session_id>/end/", usage_views.end_my_session, name="end_my_session"),
]
