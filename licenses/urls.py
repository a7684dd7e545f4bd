from django.urls import path

from . import views

urlpatterns = [
    path("o/<str:org_id>/licenses/", views.licenses, name="licenses"),
    path("o/<str:org_id>/licenses/<str:product>/", views.product_page, name="licenses_product"),
    path("o/<str:org_id>/licenses/<str:product>/grant/", views.grant, name="licenses_grant"),
    path("o/<str:org_id>/licenses/<str:product>/revoke/", views.revoke, name="licenses_revoke"),
    path(
        "o/<str:org_id>/licenses/<str:product>/sessions/<str:session_id>/end/",
        views.end_session,
        name="licenses_end_session",
    ),
    path(
        "o/<str:org_id>/licenses/<str:product>/machines/<int:machine_pk>/deactivate/",
        views.deactivate,
        name="licenses_deactivate_machine",
    ),
    path("o/<str:org_id>/licenses/<str:product>/offline/", views.create_offline, name="licenses_offline_create"),
    path(
        "o/<str:org_id>/licenses/<str:product>/offline/<str:license_id>.lic",
        views.download_offline,
        name="licenses_offline_download",
    ),
]
