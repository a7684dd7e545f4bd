from django.urls import path

from . import views

urlpatterns = [
    path("o/<slug:org_id>/licenses/", views.licenses, name="licenses"),
    path("o/<slug:org_id>/licenses/<slug:product>/", views.product_page, name="licenses_product"),
    path("o/<slug:org_id>/licenses/<slug:product>/assign/", views.assign, name="licenses_assign"),
    path("o/<slug:org_id>/licenses/<slug:product>/grant/", views.grant, name="licenses_grant"),
    path("o/<slug:org_id>/licenses/<slug:product>/revoke/", views.revoke, name="licenses_revoke"),
    path(
        "o/<slug:org_id>/licenses/<slug:product>/sessions/<slug:session_id>/end/",
        views.end_session,
        name="licenses_end_session",
    ),
    path(
        "o/<slug:org_id>/licenses/<slug:product>/line/<slug:ticket_id>/remove/",
        views.remove_from_line,
        name="licenses_remove_from_line",
    ),
    path(
        "o/<slug:org_id>/licenses/<slug:product>/machines/<int:machine_pk>/deactivate/",
        views.deactivate,
        name="licenses_deactivate_machine",
    ),
    path("o/<slug:org_id>/licenses/<slug:product>/offline/", views.create_offline, name="licenses_offline_create"),
    path(
        "o/<slug:org_id>/licenses/<slug:product>/offline/<slug:license_id>.lic",
        views.download_offline,
        name="licenses_offline_download",
    ),
]
