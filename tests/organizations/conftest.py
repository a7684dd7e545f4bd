import pytest

from tests import factories


def link_for(invitation):
    return "http://testserver" + invitation.get_absolute_url()


@pytest.fixture
def invitation(organization, owner):
    return factories.InvitationFactory(organization=organization, invited_by=owner, email="newcomer@example.com")


@pytest.fixture
def other_owner_client(client, other_organization):
    other_owner = other_organization.memberships.get(role="owner").user
    client.force_login(other_owner)
    return client


def membership_of(user, organization):
    return user.memberships.get(organization=organization, removed_at__isnull=True)
