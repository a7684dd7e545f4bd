"""API keys are per person: the actions themselves refuse anyone else but an operator."""

import pytest

from licenses.errors import NotAllowed
from organizations.models import AuditEvent
from sessions_app import actions
from sessions_app.models import ApiKey
from tests import factories


def test_nobody_creates_a_key_for_someone_else(owner, member_user, organization):
    """Not even the owner of the person's organization: the key would act as that person."""
    with pytest.raises(NotAllowed):
        actions.create_api_key(user=member_user, name="ci", organization=organization, actor=owner, ip_address=None)
    assert not ApiKey.objects.exists()
    assert not AuditEvent.objects.filter(action="api_key.created").exists()


def test_nobody_revokes_someone_elses_key(owner, member_user):
    """Revoking another person's key is refused and leaves it working."""
    api_key, _ = actions.create_api_key(user=member_user, name="ci", actor=member_user, ip_address=None)
    with pytest.raises(NotAllowed):
        actions.revoke_api_key(api_key=api_key, actor=owner, ip_address=None)
    api_key.refresh_from_db()
    assert api_key.revoked_at is None


def test_operators_manage_anyones_keys(member_user):
    """A superuser (the admin site) or the installation itself (a command) may."""
    operator = factories.UserFactory(is_superuser=True, is_staff=True)
    api_key, _ = actions.create_api_key(user=member_user, name="ci", actor=None, ip_address=None)
    assert actions.revoke_api_key(api_key=api_key, actor=operator, ip_address=None)
