from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import views

member_urls = [
    path("", views.members, name="members"),
    path("export.csv", views.export_members, name="members_export"),
    path("invite/", views.invite, name="member_invite"),
    path("transfer-ownership/", views.transfer_ownership, name="ownership_transfer"),
    path("<int:membership_id>/role/", views.change_role, name="member_change_role"),
    path("<int:membership_id>/remove/", views.remove, name="member_remove"),
    path("invitations/<int:invitation_id>/resend/", views.resend_invitation, name="invitation_resend"),
    path("invitations/<int:invitation_id>/revoke/", views.revoke_invitation, name="invitation_revoke"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("o/<slug:org_id>/", views.org_home, name="org_home"),
    path("account/", views.account, name="account"),
    path("o/<slug:org_id>/members/", include(member_urls)),
    path("invitations/<slug:token>/", views.accept_invitation, name="accept_invitation"),
    path("invitations/<slug:token>/set-password/", views.invitation_password_link, name="invitation_password_link"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/password_reset/", views.ThrottledPasswordResetView.as_view(), name="password_reset"),
    # The rest of Django's flow: logout (POST only), password reset confirm, password change.
    path("accounts/", include("django.contrib.auth.urls")),
]
