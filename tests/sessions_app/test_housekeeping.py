"""expire_sessions and create_api_key, the operator commands of this app."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from organizations.audit import Action
from organizations.models import AuditEvent
from sessions_app.models import ApiKey, EngineSession, IdempotencyRecord, Machine, hash_api_key
from tests import factories

from .conftest import Engine


def test_expire_sessions_ends_lapsed_leases_as_expired(re_pool):
    """Lapsed leases end with reason expired at their lease's end; live ones are untouched."""
    lapsed = factories.EngineSessionFactory(pool=re_pool, lease_expires_at=timezone.now() - timedelta(minutes=1))
    live = factories.EngineSessionFactory(pool=re_pool)
    out = StringIO()
    call_command("expire_sessions", stdout=out)
    lapsed.refresh_from_db()
    live.refresh_from_db()
    assert lapsed.end_reason == "expired"
    assert lapsed.ended_at == lapsed.lease_expires_at
    assert live.is_live
    assert "Expired 1 sessions" in out.getvalue()


def test_expire_sessions_deregisters_ephemeral_machines_and_idle_ones(re_pool):
    """An ephemeral machine whose lease lapsed, and machines idle past the pool's limit, are deregistered."""
    re_pool.machine_idle_days = 30
    re_pool.save()
    container = factories.MachineFactory(pool=re_pool, ephemeral=True)
    factories.EngineSessionFactory(
        pool=re_pool, machine=container, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    idle = factories.MachineFactory(pool=re_pool, last_seen_at=timezone.now() - timedelta(days=31))
    busy_but_old = factories.MachineFactory(pool=re_pool, last_seen_at=timezone.now() - timedelta(days=31))
    factories.EngineSessionFactory(pool=re_pool, machine=busy_but_old)
    recent = factories.MachineFactory(pool=re_pool, last_seen_at=timezone.now() - timedelta(days=29))
    call_command("expire_sessions", stdout=StringIO())
    assert set(Machine.objects.registered().values_list("pk", flat=True)) == {busy_but_old.pk, recent.pk}
    idle.refresh_from_db()
    assert idle.deactivation_reason == "idle"
    container.refresh_from_db()
    assert container.deactivation_reason == "ephemeral"


def test_expire_sessions_drops_old_bookkeeping(member_user):
    """Idempotency records older than 48 hours are deleted; recent ones stay."""
    api_key = factories.ApiKeyFactory(user=member_user)
    IdempotencyRecord.objects.create(
        api_key=api_key, key="old", request_fingerprint="x", created_at=timezone.now() - timedelta(hours=49)
    )
    IdempotencyRecord.objects.create(api_key=api_key, key="new", request_fingerprint="x")
    call_command("expire_sessions", stdout=StringIO())
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]


def test_expire_sessions_twice_changes_nothing_more(re_pool):
    """Running it again finds nothing left to do."""
    factories.EngineSessionFactory(pool=re_pool, lease_expires_at=timezone.now() - timedelta(minutes=1))
    call_command("expire_sessions", stdout=StringIO())
    ended_at = EngineSession.objects.get().ended_at
    out = StringIO()
    call_command("expire_sessions", stdout=out)
    assert "Expired 0 sessions" in out.getvalue()
    assert EngineSession.objects.get().ended_at == ended_at


def test_create_api_key_prints_a_working_key_alone_on_the_last_line(client, member_user, organization, re_pool):
    """The command's last line is the key, and the key works against the API."""
    out = StringIO()
    call_command(
        "create_api_key",
        member_user.email.upper(),
        "--org",
        organization.public_id,
        "--name",
        "Jenkins",
        "--expires",
        "2099-12-31",
        stdout=out,
        stderr=StringIO(),
    )
    raw_key = out.getvalue().strip().splitlines()[-1]
    api_key = ApiKey.objects.get(key_hash=hash_api_key(raw_key))
    assert api_key.name == "Jenkins"
    assert api_key.organization == organization
    assert api_key.expires_at.date().isoformat() == "2100-01-01"
    assert Engine(client, raw_key).activate().status_code == 201
    event = AuditEvent.objects.get(action=Action.API_KEY_CREATED)
    assert event.organization == organization
    assert raw_key not in str(event.after)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["nobody@example.com"], "Unknown user"),
        (["{email}", "--org", "404"], "Unknown organization"),
        (["{email}", "--org", "{other}"], "not a member"),
        (["{email}", "--expires", "tomorrow"], "--expires"),
        (["{email}", "--expires", "2000-01-01"], "future"),
        (["{email}", "--name", "  "], "name"),
        (["{email}", "--name", "x" * 101], "at most 100 characters"),
        (["{email}", "--expires", "9999-12-31"], "before 9999-12-31"),
    ],
)
def test_create_api_key_refuses_bad_arguments_in_one_line(member_user, other_organization, arguments, message):
    """Bad arguments stop the command with a one-line message and create no key."""
    arguments = [a.format(email=member_user.email, other=other_organization.public_id) for a in arguments]
    with pytest.raises(CommandError) as refusal:
        call_command("create_api_key", *arguments, stdout=StringIO(), stderr=StringIO())
    assert message in str(refusal.value)
    assert "\n" not in str(refusal.value)
    assert not ApiKey.objects.exists()
