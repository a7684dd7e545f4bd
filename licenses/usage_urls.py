from django.urls import path

from organizations.urls import pending

urlpatterns = [
    path("o/<str:org_id>/usage/", pending, name="usage"),
    path("my-licenses/", pending, name="my_licenses"),
]
