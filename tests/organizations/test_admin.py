import pytest
from django.urls import reverse

from organizations.audit import Action
from organizations.models import AuditEvent, User
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_client(client):
    client.force_login(User.objects.create_superuser("root@example.com", factories.PASSWORD))
    return client


def test_operators_add_people_by_email_and_password(operator_client):
    """The admin's add form asks for an email, not a username."""
    response = operator_client.post(
        reverse("admin:organizations_user_add"),
        {
            "email": "new@example.com",
            "name": "New Person",
            "usable_password": "true",
            "password1": "a-fine-new-password",
            "password2": "a-fine-new-password",
        },
    )
    assert response.status_code == 302, response.content
    assert User.objects.get(email="new@example.com").check_password("a-fine-new-password")


def test_admin_lists_and_searches_people(operator_client, owner, organization):
    """Every registered model's list answers."""
    assert (
        owner.email.encode()
        in operator_client.get(reverse("admin:organizations_user_changelist") + "?q=olivia").content
    )
    for name in ("organization", "membership", "invitation", "auditevent"):
        assert operator_client.get(reverse(f"admin:organizations_{name}_changelist")).status_code == 200
    assert operator_client.get(reverse("admin:organizations_user_change", args=[owner.pk])).status_code == 200


def test_the_audit_log_is_read_only_in_the_admin(operator_client, organization):
    """No add, change or delete, even for a superuser."""
    event = AuditEvent.objects.create(organization=organization, action=Action.MEMBER_INVITED)
    assert operator_client.get(reverse("admin:organizations_auditevent_add")).status_code == 403
    assert (
        operator_client.post(
            reverse("admin:organizations_auditevent_delete", args=[event.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_the_admin_cannot_remove_a_member_behind_the_members_page(operator_client, organization):
    """Removing someone revokes their seats, sessions, machines and keys and is audited; only the
    Members page's removal does that, so the admin cannot mark a membership removed."""
    from licenses.models import LicensedUser

    membership = factories.MembershipFactory(organization=organization, role="member")
    seat = factories.LicensedUserFactory(
        pool=factories.LicensePoolFactory(organization=organization, product="KSE"), user=membership.user
    )
    change = reverse("admin:organizations_membership_change", args=[membership.pk])
    response = operator_client.post(
        change,
        {
            "organization": organization.pk,
            "user": membership.user.pk,
            "role": "member",
            "joined_at_0": "2026-01-01",
            "joined_at_1": "09:00:00",
            "removed_at_0": "2026-02-01",
            "removed_at_1": "09:00:00",
        },
    )

    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.removed_at is None
    assert LicensedUser.objects.active().filter(pk=seat.pk).exists()
