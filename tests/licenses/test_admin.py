from datetime import timedelta

import pytest
from django.utils import timezone

from licenses import signing
from licenses.models import LicensePool, SigningKey
from organizations.models import AuditEvent
from sessions_app.models import EndReason, EngineSession
from tests import factories


@pytest.fixture
def operator_client(client, db):
    client.force_login(factories.UserFactory(is_staff=True, is_superuser=True))
    return client


def pool_form(organization, **changes):
    now = timezone.now()
    data = {
        "organization": organization.pk,
        "product": "RE",
        "quota": "5",
        "machine_quota": "5",
        "starts_at_0": now.date().isoformat(),
        "starts_at_1": "00:00:00",
        "expires_at_0": (now + timedelta(days=365)).date().isoformat(),
        "expires_at_1": "23:59:59",
        "lease_seconds": "300",
        "machine_idle_days": "",
        "machine_allow_list": "",
    }
    return data | changes


def test_an_operator_creates_a_pool_in_the_admin(operator_client, organization):
    """The admin creates the pool through the provisioning action, so the change is audited."""
    response = operator_client.post("/admin/licenses/licensepool/add/", pool_form(organization))
    assert response.status_code == 302
    pool = LicensePool.objects.get()
    assert (pool.organization, pool.product, pool.quota) == (organization, "RE", 5)
    assert AuditEvent.objects.filter(action="pool.provisioned", target_id=str(pool.pk)).exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quota": "-1"}, "greater than or equal to 0"),
        ({"lease_seconds": "10"}, "The lease must be at least 30 seconds."),
        ({"expires_at_0": "2000-01-01"}, "The subscription must end after it starts."),
    ],
)
def test_the_admin_refuses_what_the_command_refuses(operator_client, organization, changes, message):
    """The admin form re-renders with the same messages and saves nothing."""
    response = operator_client.post("/admin/licenses/licensepool/add/", pool_form(organization, **changes))
    assert response.status_code == 200
    assert message in response.text
    assert not LicensePool.objects.exists()


def test_lowering_the_quota_in_the_admin_ends_the_newest_sessions(operator_client, re_pool):
    """The admin's change goes through the same action as the command."""
    old, new = (
        factories.EngineSessionFactory(pool=re_pool, started_at=timezone.now() - timedelta(minutes=m)) for m in (5, 1)
    )
    data = pool_form(re_pool.organization, quota="1", machine_quota="3")
    data.update(
        starts_at_0=re_pool.starts_at.date().isoformat(),
        starts_at_1=re_pool.starts_at.strftime("%H:%M:%S"),
        expires_at_0=re_pool.expires_at.date().isoformat(),
        expires_at_1=re_pool.expires_at.strftime("%H:%M:%S"),
    )
    response = operator_client.post(f"/admin/licenses/licensepool/{re_pool.pk}/change/", data)
    assert response.status_code == 302
    re_pool.refresh_from_db()
    assert re_pool.quota == 1
    assert EngineSession.objects.get(pk=new.pk).end_reason == EndReason.QUOTA_REDUCED
    assert EngineSession.objects.get(pk=old.pk).is_live


def test_the_admin_never_shows_the_private_signing_key(operator_client):
    """The stored key's row is listed without its PEM."""
    signing.forget_loaded_keys()
    signing.public_key_pem()
    key = SigningKey.objects.get()
    signing.forget_loaded_keys()
    for path in ["/admin/licenses/signingkey/", f"/admin/licenses/signingkey/{key.pk}/change/"]:
        response = operator_client.get(path)
        assert response.status_code == 200
        assert "PRIVATE KEY" not in response.text


def test_offline_licenses_are_read_only_in_the_admin(operator_client, re_pool):
    """Issued files cannot be added, changed or deleted there."""
    offline = factories.OfflineLicenseFactory(pool=re_pool)
    assert operator_client.get("/admin/licenses/offlinelicense/add/").status_code == 403
    response = operator_client.post(f"/admin/licenses/offlinelicense/{offline.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
