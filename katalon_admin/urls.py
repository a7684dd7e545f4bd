from django.contrib import admin
from django.urls import include, path

# Each app owns its pages; the engine API is apart from them, under its versioned prefix.
urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("sessions_app.api_urls")),
    path("", include("organizations.urls")),
    path("", include("organizations.audit_urls")),
    path("", include("licenses.urls")),
    path("", include("licenses.usage_urls")),
    path("", include("sessions_app.urls")),
    path("", include("notifications.urls")),
]
