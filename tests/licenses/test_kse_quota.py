"""Lowering a KSE quota below its licensed users is refused, naming how many to revoke first
(issue 13, item 6): licensed users are the KSE quota, so a lower quota that left them all licensed
would turn the pool silently floating."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from licenses import actions
from licenses.errors import SeatQuotaExceeded
from licenses.models import LicensePool
from organizations.models import AuditEvent
from tests import factories

pytestmark = pytest.mark.django_db

REVOKE_TWO = (
    "The KSE quota of Acme QA cannot go down to 1: 3 licensed users hold 3 licenses. Revoke 2 licensed users first"
)


@pytest.fixture
def three_licensed(organization):
    """A KSE pool of quota 3 with three licensed users."""
    pool = factories.LicensePoolFactory(organization=organization, product="KSE", quota=3)
    for _ in range(3):
        factories.LicensedUserFactory(pool=pool, user=factories.MembershipFactory(organization=organization).user)
    return pool


def assert_unchanged(pool):
    pool.refresh_from_db()
    assert pool.quota == 3
    assert not AuditEvent.objects.filter(action="pool.provisioned").exists()


def test_the_action_refuses_and_names_how_many_to_revoke(three_licensed):
    """Nothing changes, and the refusal says what to do."""
    with pytest.raises(SeatQuotaExceeded) as refused:
        actions.provision_pool(organization=three_licensed.organization, product="KSE", quota=1)
    assert refused.value.message.startswith(REVOKE_TWO)
    assert refused.value.details["fields"]["quota"]
    assert_unchanged(three_licensed)


def test_offline_licenses_count_and_cannot_be_revoked(three_licensed):
    """Offline licenses hold licenses too; below them, the refusal says how far the quota can go."""
    factories.OfflineLicenseFactory(pool=three_licensed)
    factories.OfflineLicenseFactory(pool=three_licensed, expires_at=timezone.now() - timedelta(days=1))
    LicensePool.objects.filter(pk=three_licensed.pk).update(quota=4)
    with pytest.raises(SeatQuotaExceeded, match="3 licensed users and 1 unexpired offline licenses hold 4"):
        actions.provision_pool(organization=three_licensed.organization, product="KSE", quota=3)
    with pytest.raises(SeatQuotaExceeded, match="every licensed user revoked it can go down to 1"):
        actions.provision_pool(organization=three_licensed.organization, product="KSE", quota=0)


def test_down_to_the_licensed_users_is_allowed(three_licensed):
    """Exactly as many licenses as are held is fine, and ends no session."""
    factories.EngineSessionFactory(pool=three_licensed)
    LicensePool.objects.filter(pk=three_licensed.pk).update(quota=5)
    result = actions.provision_pool(organization=three_licensed.organization, product="KSE", quota=3)
    assert (result.pool.quota, result.sessions_ended) == (3, 0)


def test_provision_license_exits_non_zero_with_one_line(three_licensed):
    """The operator's command says it on one line and changes nothing."""
    with pytest.raises(CommandError) as refused:
        call_command(
            "provision_license",
            three_licensed.organization.public_id,
            "--product",
            "KSE",
            "--quota",
            "1",
            stdout=StringIO(),
        )
    assert str(refused.value).startswith(REVOKE_TWO)
    assert "\n" not in str(refused.value)
    assert_unchanged(three_licensed)


def pool_form(pool, **changes):
    data = {
        "quota": str(pool.quota),
        "machine_quota": str(pool.machine_quota),
        "starts_at_0": pool.starts_at.strftime("%Y-%m-%d"),
        "starts_at_1": pool.starts_at.strftime("%H:%M:%S"),
        "expires_at_0": pool.expires_at.strftime("%Y-%m-%d"),
        "expires_at_1": pool.expires_at.strftime("%H:%M:%S"),
        "lease_seconds": str(pool.lease_seconds),
        "machine_idle_days": "",
        "machine_allow_list": "",
    }
    return data | changes


@pytest.fixture
def operator_client(client, db):
    client.force_login(factories.UserFactory(is_staff=True, is_superuser=True))
    return client


def test_the_admin_form_shows_the_refusal(operator_client, three_licensed):
    """The change form comes back with the message beside the quota; nothing is saved."""
    response = operator_client.post(
        f"/admin/licenses/licensepool/{three_licensed.pk}/change/", pool_form(three_licensed, quota="1")
    )
    assert response.status_code == 200
    assert REVOKE_TWO in response.text
    assert_unchanged(three_licensed)


def test_a_grant_committed_meanwhile_is_a_message_not_an_error(operator_client, three_licensed, monkeypatch):
    """The form saw room; a grant landed before the action locked the pool: the action refuses, and
    the admin says so instead of failing or claiming it saved."""
    LicensePool.objects.filter(pk=three_licensed.pk).update(quota=5)
    three_licensed.refresh_from_db()
    real_provision = actions.provision_pool

    def grant_first(**kwargs):
        factories.LicensedUserFactory(
            pool=three_licensed, user=factories.MembershipFactory(organization=three_licensed.organization).user
        )
        return real_provision(**kwargs)

    monkeypatch.setattr(actions, "provision_pool", grant_first)
    response = operator_client.post(
        f"/admin/licenses/licensepool/{three_licensed.pk}/change/", pool_form(three_licensed, quota="3"), follow=True
    )
    assert response.status_code == 200
    assert "Nothing was saved: The KSE quota of Acme QA cannot go down to 3" in response.text
    assert "was changed successfully" not in response.text
    three_licensed.refresh_from_db()
    assert three_licensed.quota == 5


def test_the_licenses_page_says_when_licensed_users_exceed_the_quota(client, owner, three_licensed):
    """A pool left over its quota before lowering was refused tells its managers how many to revoke."""
    LicensePool.objects.filter(pk=three_licensed.pk).update(quota=1)
    client.force_login(owner)
    page = client.get(f"/o/{three_licensed.organization.public_id}/licenses/KSE/").content.decode()
    assert "3 licenses are held against a quota of 1: revoke 2 licensed users" in page
