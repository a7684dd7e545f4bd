from django.urls import path

from organizations.urls import pending

urlpatterns = [
    path("o/<str:org_id>/licenses/", pending, name="licenses"),
    path("o/<str:org_id>/licenses/<str:product>/", pending, name="licenses_product"),
]
