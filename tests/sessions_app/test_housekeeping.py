"""expire_sessions and create_api_key, the operator commands of this app."""

import threading
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from licenses.models import LicensePool
from organizations.audit import Action
from organizations.models import AuditEvent
from sessions_app import actions
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


def busy_pool_is_locked(pool):
    """Whether another connection holds the pool's row lock right now (this one does not wait)."""
    with transaction.atomic():
        return not LicensePool.objects.filter(pk=pool.pk).select_for_update(skip_locked=True).exists()


def lapsed_sessions(pool, count, *, ephemeral=False):
    """`count` sessions of `pool` whose leases ran out, each on its own machine."""
    now = timezone.now()
    machines = Machine.objects.bulk_create(
        [Machine(pool=pool, machine_id=f"lapsed-{pool.pk}-{n}", ephemeral=ephemeral) for n in range(count)]
    )
    user = factories.UserFactory()
    EngineSession.objects.bulk_create(
        EngineSession(
            pool=pool,
            machine=machine,
            user=user,
            started_at=now - timedelta(hours=1),
            last_heartbeat_at=now - timedelta(minutes=30),
            lease_expires_at=now - timedelta(minutes=25, seconds=n),
        )
        for n, machine in enumerate(machines)
    )
    return machines


def test_expire_sessions_ends_every_lapsed_lease_in_batches(re_pool, other_organization, monkeypatch):
    """More lapsed leases than one batch, in several pools, all end as expired at their lease's end,
    and the ephemeral machines they leave are deregistered; live sessions are untouched."""
    monkeypatch.setattr(actions, "EXPIRE_BATCH", 7)
    other_pool = factories.LicensePoolFactory(organization=other_organization, product="RE")
    lapsed_sessions(re_pool, 30)
    containers = lapsed_sessions(other_pool, 9, ephemeral=True)
    live = factories.EngineSessionFactory(pool=re_pool)
    out = StringIO()
    call_command("expire_sessions", stdout=out)
    assert "Expired 39 sessions" in out.getvalue()
    assert not EngineSession.objects.lapsed().exists()
    expired = EngineSession.objects.filter(end_reason="expired")
    assert expired.count() == 39
    assert all(session.ended_at == session.lease_expires_at for session in expired)
    assert not Machine.objects.filter(pk__in=[m.pk for m in containers]).registered().exists()
    live.refresh_from_db()
    assert live.is_live


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_expire_sessions_passes_over_a_busy_pool_and_comes_back_to_it(organization, other_organization):
    """While an activation holds one pool's lock, expire_sessions ends the other pools' lapsed leases
    without waiting, then waits its turn for the busy pool like an activation and ends its leases."""
    busy = factories.LicensePoolFactory(organization=organization, product="RE")
    free = factories.LicensePoolFactory(organization=other_organization, product="RE")
    lapsed_sessions(busy, 5)
    lapsed_sessions(free, 5)
    free_pool_done = threading.Event()

    def hold_the_busy_pool():
        try:
            with transaction.atomic():
                LicensePool.objects.select_for_update().get(pk=busy.pk)
                for _ in range(200):  # up to 10 s
                    if not EngineSession.objects.lapsed().filter(pool=free).exists():
                        free_pool_done.set()
                        break
                    time.sleep(0.05)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_busy_pool)
    holder.start()
    while not busy_pool_is_locked(busy):
        time.sleep(0.01)
    call_command("expire_sessions", stdout=StringIO())
    holder.join()
    assert free_pool_done.is_set()
    assert not EngineSession.objects.lapsed().exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_expire_sessions_leaves_a_session_another_transaction_is_ending_to_it(re_pool):
    """A lapsed session whose row a heartbeat or release holds is skipped, not waited for: the run
    ends the rest and the next run ends that one."""
    lapsed_sessions(re_pool, 4)
    held = EngineSession.objects.order_by("pk").first()
    locked, run_over = threading.Event(), threading.Event()

    def hold_one_session():
        try:
            with transaction.atomic():
                EngineSession.objects.select_for_update().get(pk=held.pk)
                locked.set()
                run_over.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_one_session)
    holder.start()
    locked.wait(timeout=10)
    out = StringIO()
    call_command("expire_sessions", stdout=out)
    run_over.set()
    holder.join()
    assert "Expired 3 sessions" in out.getvalue()
    assert list(EngineSession.objects.lapsed().values_list("pk", flat=True)) == [held.pk]
    call_command("expire_sessions", stdout=StringIO())
    assert not EngineSession.objects.lapsed().exists()


def expiry_scene(pool):
    """Sessions of every kind expiry meets, on machines named the same in every pool: lapsed on an
    ephemeral machine (deregistered after), lapsed beside a live one on an ephemeral machine (it
    stays), lapsed on ordinary machines, live and already ended ones (untouched)."""
    now = timezone.now()
    user = factories.UserFactory()
    machines = {
        name: Machine.objects.create(pool=pool, machine_id=name, ephemeral=name.startswith("container"))
        for name in ("container-a", "container-b", "agent-a", "agent-b")
    }

    def session(machine, lease_from_now, **fields):
        return EngineSession(
            pool=pool,
            machine=machines[machine],
            user=user,
            public_id=f"s_{pool.pk}_{len(rows)}",
            started_at=now - timedelta(hours=2),
            last_heartbeat_at=now - timedelta(hours=1),
            lease_expires_at=now + lease_from_now,
            **fields,
        )

    rows = []
    for machine, lease, fields in [
        ("container-a", -timedelta(minutes=30), {}),
        ("container-b", -timedelta(minutes=20), {}),
        ("container-b", timedelta(minutes=4), {}),
        ("agent-a", -timedelta(minutes=40), {}),
        ("agent-a", -timedelta(minutes=10), {}),
        ("agent-b", -timedelta(hours=1), {"ended_at": now - timedelta(hours=1, minutes=10), "end_reason": "released"}),
        ("agent-b", timedelta(minutes=3), {}),
    ]:
        rows.append(session(machine, lease, **fields))
    EngineSession.objects.bulk_create(rows)
    return machines


def expiry_outcome(pool, since):
    """What expiry did in the pool, named so that two pools' outcomes compare."""
    sessions = [
        (s.machine.machine_id, s.lease_expires_at - s.started_at, s.end_reason, s.ended_at == s.lease_expires_at)
        for s in EngineSession.objects.filter(pool=pool)
        .select_related("machine")
        .order_by("machine__machine_id", "lease_expires_at")
    ]
    machines = [
        (m.machine_id, m.deactivation_reason, m.deactivated_at is not None, m.last_seen_at >= since)
        for m in Machine.objects.filter(pool=pool).order_by("machine_id")
    ]
    return sessions, machines


@pytest.mark.postgres
def test_the_one_statement_batch_does_what_the_orm_batch_does(organization, other_organization, monkeypatch):
    """PostgreSQL's single-statement batch ends the same sessions, the same way, and leaves the
    machines as the ORM's statements do (SQLite's path), one batch at a time."""
    one_statement = factories.LicensePoolFactory(organization=organization, product="RE")
    orm = factories.LicensePoolFactory(organization=other_organization, product="RE")
    for pool in (one_statement, orm):
        expiry_scene(pool)
    since = timezone.now()
    # Two at a time, fewer than the four lapsed: the first batch takes the oldest leases.
    monkeypatch.setattr(actions, "EXPIRE_BATCH", 2)
    assert actions._expire_batch(one_statement.pk, wait=False) == 2
    with transaction.atomic():
        LicensePool.objects.select_for_update().get(pk=orm.pk)
        assert EngineSession.objects.filter(pool=orm).expire_lapsed(2) == 2
    assert expiry_outcome(one_statement, since) == expiry_outcome(orm, since)
    assert actions._expire_batch(one_statement.pk, wait=False) == 2
    with transaction.atomic():
        assert EngineSession.objects.filter(pool=orm).expire_lapsed(2) == 2
    outcome = expiry_outcome(one_statement, since)
    assert outcome == expiry_outcome(orm, since)
    assert outcome[1] == [
        ("agent-a", "", False, True),
        ("agent-b", "", False, False),
        ("container-a", "ephemeral", True, True),
        ("container-b", "", False, True),
    ]
    assert not EngineSession.objects.lapsed().exists()
