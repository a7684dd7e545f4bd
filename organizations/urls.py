from django.contrib.auth import views as auth_views
from django.shortcuts import render
from django.urls import include, path


def pending(request, **kwargs):
    return render(request, "placeholder/pending.html")


urlpatterns = [
    path("", pending, name="home"),
    path("o/<str:org_id>/", pending, name="org_home"),
    path("o/<str:org_id>/members/", pending, name="members"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
]
