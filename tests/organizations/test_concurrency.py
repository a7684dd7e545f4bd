"""Membership changes racing each other on PostgreSQL, with real concurrent connections: the
organization row lock makes them queue, so every rule holds whatever the interleaving."""

import pytest

from organizations import actions, errors
from organizations.models import Invitation, Membership, Role
from tests import factories
from tests.concurrency import run_together
from tests.organizations.conftest import link_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_two_admins_inviting_the_same_email_at_once_make_one_invitation():
    """The second waits for the first, then sees the pending invitation and is refused."""
    organization = factories.OrganizationFactory()
    admins = [factories.MembershipFactory(organization=organization, role="admin").user for _ in range(2)]
    results = run_together(
        [
            lambda admin=admin: actions.invite_members(
                organization=organization, actor=admin, emails=["x@example.com"], role="member", link_for=link_for
            )
            for admin in admins
        ]
    )
    assert sum(isinstance(r, list) for r in results) == 1
    assert sum(isinstance(r, errors.InvalidInvitations) for r in results) == 1
    assert Invitation.objects.filter(organization=organization).count() == 1


def test_two_transfers_at_once_leave_exactly_one_owner():
    """Only the first transfer runs as owner; the second finds its actor demoted."""
    owner = factories.UserFactory()
    organization = factories.OrganizationFactory(owner=owner)
    successors = [factories.MembershipFactory(organization=organization) for _ in range(2)]
    results = run_together(
        [
            lambda m=m: actions.transfer_ownership(organization=organization, actor=owner, membership_id=m.pk)
            for m in successors
        ]
    )
    assert sum(isinstance(r, Membership) for r in results) == 1
    assert sum(isinstance(r, errors.NotAllowed) for r in results) == 1
    assert Membership.objects.active().filter(organization=organization, role=Role.OWNER).count() == 1


def test_removing_a_member_while_another_admin_promotes_them_ends_removed():
    """Whatever the order, the member ends removed and the change of role never resurrects them."""
    organization = factories.OrganizationFactory()
    admins = [factories.MembershipFactory(organization=organization, role="admin").user for _ in range(2)]
    target = factories.MembershipFactory(organization=organization)
    run_together(
        [
            lambda: actions.remove_member(organization=organization, actor=admins[0], membership_id=target.pk),
            lambda: actions.change_role(
                organization=organization, actor=admins[1], membership_id=target.pk, role=Role.ADMIN
            ),
        ]
    )
    target.refresh_from_db()
    assert target.removed_at is not None
