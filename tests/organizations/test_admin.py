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
