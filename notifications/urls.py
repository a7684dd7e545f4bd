from django.urls import include, path

from . import views

endpoint_urls = [
    path("", views.endpoint, name="notifications_endpoint"),
    path("edit/", views.update_endpoint, name="notifications_endpoint_update"),
    path("roll-secret/", views.roll_secret, name="notifications_endpoint_roll"),
    path("enable/", views.set_enabled, {"enabled": True}, name="notifications_endpoint_enable"),
    path("disable/", views.set_enabled, {"enabled": False}, name="notifications_endpoint_disable"),
    path("delete/", views.delete_endpoint, name="notifications_endpoint_delete"),
    path("test/", views.send_test, name="notifications_endpoint_test"),
    path("deliveries/<int:delivery_id>/send-again/", views.send_again, name="notifications_send_again"),
]

urlpatterns = [
    path("o/<slug:org_id>/notifications/", views.notifications, name="notifications"),
    path("o/<slug:org_id>/notifications/alerts/", views.save_alerts, name="notifications_alerts"),
    path("o/<slug:org_id>/notifications/endpoints/", views.create_endpoint, name="notifications_endpoint_create"),
    path("o/<slug:org_id>/notifications/endpoints/<int:endpoint_id>/", include(endpoint_urls)),
]
