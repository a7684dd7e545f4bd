"""The admin site for operators: machines, sessions, queue tickets and API keys."""

import pytest

from organizations.audit import Action
from organizations.models import AuditEvent
from sessions_app.models import ApiKey, EngineSession, QueueTicket
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


@pytest.fixture
def staff_client(client, db):
    """A staff user allowed to use the machine and API key admin, with no role in any organization."""
    from django.contrib.auth.models import Permission

    staff = factories.UserFactory(is_staff=True)
    staff.user_permissions.set(
        Permission.objects.filter(
            codename__in=["view_machine", "change_machine", "view_apikey", "change_apikey", "view_licenseduser"]
        )
    )
    client.force_login(staff)
    return client


def test_a_refused_deactivation_is_a_message_not_an_error_page(staff_client, re_pool):
    """Issue 13, item 4: a staff user without the organization's role is told why beside the list;
    the machine and its session stay."""
    session = factories.EngineSessionFactory(pool=re_pool)
    response = staff_client.post(
        "/admin/sessions_app/machine/",
        {"action": "deactivate", "_selected_action": [session.machine.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "was not deactivated: Only owners and admins of Acme QA manage its licenses." in response.text
    session.machine.refresh_from_db()
    assert session.machine.is_registered
    assert EngineSession.objects.live().filter(pk=session.pk).exists()


def test_a_refused_key_revocation_is_a_message_not_an_error_page(staff_client):
    """Someone else's key is not theirs to revoke: a message, and the key stays usable."""
    api_key = factories.ApiKeyFactory()
    response = staff_client.post(
        "/admin/sessions_app/apikey/", {"action": "revoke", "_selected_action": [api_key.pk]}, follow=True
    )
    assert response.status_code == 200
    assert "was not revoked: People create and revoke only their own API keys." in response.text
    api_key.refresh_from_db()
    assert api_key.status == "active"


def test_sessions_machines_and_licenses_are_never_deleted_in_the_admin(operator_client, kse_pool):
    """Deleting would end nothing and audit nothing; the actions end and deactivate instead."""
    session = factories.EngineSessionFactory(pool=kse_pool)
    seat = factories.LicensedUserFactory(pool=kse_pool, user=session.user)
    for path in (
        f"/admin/sessions_app/enginesession/{session.pk}/delete/",
        f"/admin/sessions_app/machine/{session.machine.pk}/delete/",
        f"/admin/licenses/licenseduser/{seat.pk}/delete/",
    ):
        assert operator_client.post(path, {"post": "yes"}).status_code == 403, path
    response = operator_client.post(
        "/admin/licenses/licenseduser/", {"action": "revoke", "_selected_action": [seat.pk]}, follow=True
    )
    assert "Revoked 1 license(s)." in response.text
    session.refresh_from_db()
    assert session.end_reason == "withdrawn"


def test_an_operator_sees_the_lines_and_takes_an_engine_out(operator_client, re_pool):
    """Queue tickets have a list and a detail page, read-only; the action removes waiting ones,
    audited like the Licenses page's removal."""
    waiting = factories.QueueTicketFactory(pool=re_pool)
    for url in ("/admin/sessions_app/queueticket/", f"/admin/sessions_app/queueticket/{waiting.pk}/change/"):
        assert operator_client.get(url).status_code == 200, url
    response = operator_client.post(
        "/admin/sessions_app/queueticket/",
        {"action": "remove_from_line", "_selected_action": [waiting.pk]},
        follow=True,
    )
    assert "Took 1 engine(s) out of the line." in response.content.decode()
    assert QueueTicket.objects.get(pk=waiting.pk).outcome == "removed"
    assert AuditEvent.objects.filter(action=Action.QUEUE_TICKET_REMOVED).count() == 1
