from django.urls import path, re_path

from . import api

# Paths without a trailing slash, as the contract writes them; anything else under /api/v1/ gets
# the contract's JSON 404 instead of the HTML one (a path may hold an encoded newline, which `.` would not match).
urlpatterns = [
    path("engine/activate", api.activate),
    path("engine/sessions/<str:session_id>/heartbeat", api.heartbeat),
    path("engine/sessions/<str:session_id>/release", api.release),
    path("engine/organizations", api.organizations),
    path("offline-licenses/public-key", api.public_key),
    path("openapi.json", api.openapi),
    re_path(r"^(?P<path>[\s\S]*)$", api.not_found),
]
