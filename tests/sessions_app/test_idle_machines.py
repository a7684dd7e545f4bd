"""Idle machines (issue 13, item 7): heartbeats keep a machine's last_seen_at current, and no machine
with a live or recently live session is deregistered as idle."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from sessions_app.models import EngineSession, Machine
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def idle_pool(re_pool):
    """A pool deregistering machines idle for a day, with one-minute leases."""
    re_pool.machine_idle_days = 1
    re_pool.lease_seconds = 60
    re_pool.save()
    return re_pool


def long_running_session(pool, user, *, heartbeat_seconds_ago):
    """A session started three days ago on a machine registered then, last heartbeated a while ago."""
    three_days_ago = timezone.now() - timedelta(days=3)
    machine = factories.MachineFactory(pool=pool, user=user, registered_at=three_days_ago, last_seen_at=three_days_ago)
    beat = timezone.now() - timedelta(seconds=heartbeat_seconds_ago)
    return factories.EngineSessionFactory(
        pool=pool,
        machine=machine,
        user=user,
        started_at=three_days_ago,
        last_heartbeat_at=beat,
        lease_expires_at=beat + timedelta(seconds=pool.lease_seconds),
    )


def test_a_machine_seen_seconds_ago_is_not_deregistered_when_another_activates(engine, idle_pool, member_user):
    """The issue's case: the session started 3 days ago and heartbeated 65 s ago (its one-minute lease
    lapsed 5 s ago); another machine's activation leaves that machine registered, its lease expired."""
    session = long_running_session(idle_pool, member_user, heartbeat_seconds_ago=65)
    assert engine.activate(machine_id="another").status_code == 201
    session.machine.refresh_from_db()
    assert session.machine.is_registered
    session.refresh_from_db()
    assert session.end_reason == "expired"


def test_a_heartbeat_keeps_the_machine_seen(engine, idle_pool, member_user):
    """A heartbeat moves a stale last_seen_at to now; the next ones within the resolution write nothing."""
    session = long_running_session(idle_pool, member_user, heartbeat_seconds_ago=10)
    assert engine.post(f"engine/sessions/{session.public_id}/heartbeat").status_code == 200
    session.machine.refresh_from_db()
    seen = session.machine.last_seen_at
    assert timezone.now() - seen < timedelta(seconds=10)
    assert engine.post(f"engine/sessions/{session.public_id}/heartbeat").status_code == 200
    session.machine.refresh_from_db()
    assert session.machine.last_seen_at == seen
    Machine.objects.filter(pk=session.machine_id).update(last_seen_at=seen - timedelta(hours=1))
    assert engine.post(f"engine/sessions/{session.public_id}/heartbeat").status_code == 200
    session.machine.refresh_from_db()
    assert session.machine.last_seen_at > seen


def test_expire_sessions_never_deregisters_a_machine_with_a_recently_live_session(idle_pool, member_user):
    """Housekeeping ends lapsed leases first; a machine whose session ended within the idle limit,
    or is still open, stays, however old its last_seen_at. One idle for longer goes."""
    lapsed = long_running_session(idle_pool, member_user, heartbeat_seconds_ago=65)
    ended_recently = long_running_session(idle_pool, member_user, heartbeat_seconds_ago=3600)
    EngineSession.objects.filter(pk=ended_recently.pk).update(
        ended_at=timezone.now() - timedelta(hours=2), end_reason="released"
    )
    two_days_ago = timezone.now() - timedelta(days=2)
    truly_idle = factories.MachineFactory(pool=idle_pool, last_seen_at=two_days_ago)
    factories.EngineSessionFactory(
        pool=idle_pool,
        machine=truly_idle,
        started_at=two_days_ago,
        lease_expires_at=two_days_ago + timedelta(minutes=1),
        ended_at=two_days_ago + timedelta(minutes=1),
        end_reason="released",
    )
    call_command("expire_sessions", stdout=StringIO())
    registered = set(Machine.objects.registered().values_list("pk", flat=True))
    assert registered == {lapsed.machine_id, ended_recently.machine_id}
    truly_idle.refresh_from_db()
    assert truly_idle.deactivation_reason == "idle"


def test_the_idle_cutoff_is_the_databases_clock(engine, idle_pool, monkeypatch):
    """A web host whose clock runs a day ahead does not take a machine seen 20 hours ago for idle."""
    seen = factories.MachineFactory(pool=idle_pool, last_seen_at=timezone.now() - timedelta(hours=20))
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(days=1))
    assert engine.activate(machine_id="another").status_code == 201
    seen.refresh_from_db()
    assert seen.is_registered
