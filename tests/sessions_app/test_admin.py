"""The admin site for operators: machines, sessions and API keys."""

import pytest

from sessions_app.models import ApiKey
from tests import factories


@pytest.fixture
def operator_client(client, db):
    operator = factories.UserFactory(is_staff=True, is_superuser=True)
    client.force_login(operator)
    return client


def test_the_lists_open_for_an_operator(operator_client, re_pool):
    """Machines, sessions and API keys each have a working list and detail page."""
    session = factories.EngineSessionFactory(pool=re_pool)
    api_key = factories.ApiKeyFactory()
    for url in (
        "/admin/sessions_app/machine/",
        f"/admin/sessions_app/machine/{session.machine.pk}/change/",
        "/admin/sessions_app/enginesession/",
        f"/admin/sessions_app/enginesession/{session.pk}/change/",
        "/admin/sessions_app/apikey/",
        f"/admin/sessions_app/apikey/{api_key.pk}/change/",
    ):
        assert operator_client.get(url).status_code == 200, url


def test_an_api_keys_hash_is_never_shown(operator_client):
    """Neither the list nor the detail page carries the key's hash."""
    api_key = factories.ApiKeyFactory()
    for url in ("/admin/sessions_app/apikey/", f"/admin/sessions_app/apikey/{api_key.pk}/change/"):
        assert api_key.key_hash not in operator_client.get(url).content.decode()


def test_an_operator_can_revoke_keys(operator_client):
    """The revoke action revokes the chosen keys."""
    keys = [factories.ApiKeyFactory() for _ in range(2)]
    operator_client.post(
        "/admin/sessions_app/apikey/", {"action": "revoke", "_selected_action": [keys[0].pk]}, follow=True
    )
    assert [key.status for key in ApiKey.objects.order_by("pk")] == ["revoked", "active"]


def test_the_admin_registers_and_deregisters_machines_only_through_the_actions(operator_client, re_pool):
    """A machine registered or marked deactivated by hand would skip the machine quota and leave its
    sessions running; operators deactivate through the action, which ends them and is audited."""
    from organizations.models import AuditEvent
    from sessions_app.models import EngineSession, Machine

    session = factories.EngineSessionFactory(pool=re_pool)
    machine = session.machine
    assert operator_client.get("/admin/sessions_app/machine/add/").status_code == 403
    changed = operator_client.post(
        f"/admin/sessions_app/machine/{machine.pk}/change/",
        {"machine_id": machine.machine_id, "pool": re_pool.pk, "deactivated_at_0": "2026-01-01"},
    )
    assert changed.status_code == 403
    assert Machine.objects.registered().filter(pk=machine.pk).exists()

    operator_client.post(
        "/admin/sessions_app/machine/", {"action": "deactivate", "_selected_action": [machine.pk]}, follow=True
    )
    assert not Machine.objects.registered().filter(pk=machine.pk).exists()
    assert not EngineSession.objects.live().filter(pk=session.pk).exists()
    assert AuditEvent.objects.filter(action="machine.deactivated").count() == 1
