import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from organizations.audit import Action
from organizations.models import AuditEvent, Membership, User
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


class TestMembershipsEndOnlyThroughRemoveMember:
    """Issue 13, item 2: a membership deleted in the admin skipped everything removal does."""

    @pytest.fixture
    def holdings(self, organization):
        """A member with a KSE seat, a live RE session and a key for the organization."""
        membership = factories.MembershipFactory(organization=organization, role="member")
        kse = factories.LicensePoolFactory(organization=organization, product="KSE")
        re_pool = factories.LicensePoolFactory(organization=organization, product="RE")
        seat = factories.LicensedUserFactory(pool=kse, user=membership.user)
        session = factories.EngineSessionFactory(pool=re_pool, user=membership.user)
        key = factories.ApiKeyFactory(user=membership.user, organization=organization)
        return membership, seat, session, key

    def test_a_membership_cannot_be_deleted_in_the_admin(self, operator_client, organization, owner, holdings):
        """Neither the delete page nor the bulk delete action exists, for a member or the owner."""
        membership = holdings[0]
        owner_membership = Membership.objects.get(organization=organization, user=owner)
        for target in (membership, owner_membership):
            url = reverse("admin:organizations_membership_delete", args=[target.pk])
            assert operator_client.get(url).status_code == 403
            assert operator_client.post(url, {"post": "yes"}).status_code == 403
        changelist = reverse("admin:organizations_membership_changelist")
        operator_client.post(
            changelist, {"action": "delete_selected", "_selected_action": [membership.pk], "post": "yes"}
        )
        assert Membership.objects.active().filter(pk__in=[membership.pk, owner_membership.pk]).count() == 2

    def test_the_inline_on_the_organization_cannot_delete_memberships(
        self, operator_client, organization, owner, holdings
    ):
        """The organization's page offers no Delete box, and one posted anyway deletes nothing."""
        url = reverse("admin:organizations_organization_change", args=[organization.pk])
        page = operator_client.get(url).content.decode()
        assert "memberships-0-DELETE" not in page
        memberships = list(Membership.objects.filter(organization=organization).order_by("joined_at", "pk"))
        data = {
            "name": organization.name,
            "memberships-TOTAL_FORMS": str(len(memberships)),
            "memberships-INITIAL_FORMS": str(len(memberships)),
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
        }
        for index, m in enumerate(memberships):
            data.update(
                {
                    f"memberships-{index}-id": str(m.pk),
                    f"memberships-{index}-organization": str(organization.pk),
                    f"memberships-{index}-user": str(m.user_id),
                    f"memberships-{index}-role": m.role,
                    f"memberships-{index}-joined_at_0": m.joined_at.strftime("%Y-%m-%d"),
                    f"memberships-{index}-joined_at_1": m.joined_at.strftime("%H:%M:%S"),
                    f"memberships-{index}-DELETE": "on",
                }
            )
        operator_client.post(url, data)
        assert Membership.objects.active().filter(organization=organization).count() == len(memberships)

    def test_the_remove_action_removes_through_remove_member(self, operator_client, organization, holdings):
        """Seat revoked, session ended, key revoked, audited with the operator as actor."""
        membership, seat, session, key = holdings
        response = operator_client.post(
            reverse("admin:organizations_membership_changelist"),
            {"action": "remove_members", "_selected_action": [membership.pk]},
            follow=True,
        )
        assert "Removed 1 member(s)." in response.text
        membership.refresh_from_db()
        assert membership.removed_at is not None
        seat.refresh_from_db()
        session.refresh_from_db()
        key.refresh_from_db()
        assert seat.revoked_at is not None
        assert session.end_reason == "member_removed"
        assert key.revoked_at is not None
        event = AuditEvent.objects.get(action=Action.MEMBER_REMOVED)
        assert event.actor.email == "root@example.com"
        assert event.after["sessions_ended"] == 1 and event.after["kse_seats_revoked"] == 1

    def test_refusals_of_the_remove_action_are_messages(self, client, operator_client, organization, owner):
        """The owner is never removed, and a staff user without a role there may not remove anyone:
        each is told why beside the list, never a 500."""
        owner_membership = Membership.objects.get(organization=organization, user=owner)
        changelist = reverse("admin:organizations_membership_changelist")
        response = operator_client.post(
            changelist, {"action": "remove_members", "_selected_action": [owner_membership.pk]}, follow=True
        )
        assert response.status_code == 200
        assert "Nobody removes the owner" in response.text

        staff = factories.UserFactory(is_staff=True)
        staff.user_permissions.set(
            Permission.objects.filter(codename__in=["view_membership", "change_membership", "delete_membership"])
        )
        member = factories.MembershipFactory(organization=organization)
        client.force_login(staff)
        response = client.post(changelist, {"action": "remove_members", "_selected_action": [member.pk]}, follow=True)
        assert response.status_code == 200
        assert "You are not a member of this organization." in response.text
        assert Membership.objects.active().filter(pk__in=[owner_membership.pk, member.pk]).count() == 2
