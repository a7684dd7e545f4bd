"""The usage page's rolled-up peaks and counts are exactly what scanning every session gives."""

import random
from datetime import UTC, date, datetime, time, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from licenses.models import UsageHour, UsageRollup
from licenses.usage import (
    DAILY,
    HOUR,
    HOURLY,
    ROLLUP_DELAY,
    Period,
    custom_period,
    floor_hour,
    history,
    peak_by_bucket,
    preset_period,
    roll_up,
    usage_in_period,
)
from sessions_app import actions
from sessions_app.models import EndReason, EngineSession
from tests import factories


def periods(now):
    """Every preset range, and custom ranges: in the past, ending today, one day, today alone,
    starting before the first session, and long enough for weekly and monthly bars."""
    today = now.date()
    midnight = datetime.combine(today, time.min, tzinfo=UTC)
    days = lambda n: today - timedelta(days=n)  # noqa: E731
    return [
        *(preset_period(name, now) for name in ("24h", "7d", "30d", "12m")),
        custom_period(days(20), days(10), now),
        custom_period(days(3), today, now),
        custom_period(days(1), days(1), now),
        custom_period(today, today, now),
        custom_period(days(60), days(2), now),
        custom_period(days(200), today, now),
        custom_period(days(700), today, now),
        # One bucket each, as the quota-warning job asks for a day: rolled up, and live.
        Period(midnight - timedelta(days=1), midnight, DAILY, "yesterday"),
        Period(floor_hour(now) - 3 * HOUR, floor_hour(now) - 2 * HOUR, HOURLY, "an hour"),
        Period(midnight, now, DAILY, "today"),
    ]


def assert_same_as_a_scan(pool, now):
    """For every range: the rolled-up peaks equal PEAK_SQL's over the raw sessions, and the count
    of sessions held equals the unfiltered session history's."""
    for period in periods(now):
        fast = usage_in_period(pool=pool, period=period, now=now)
        scanned = peak_by_bucket(pool=pool, period=period, now=now)
        assert [(b.start, b.end, b.peak) for b in fast.buckets] == [(b.start, b.end, b.peak) for b in scanned], (
            period.description
        )
        assert fast.sessions_held == history(pool=pool, period=period, now=now).count(), period.description


def random_sessions(pool, people, machines, now, generator, count):
    """Sessions of every shape the portal records, many of them on hour and day edges."""
    lease = timedelta(seconds=pool.lease_seconds)
    first = floor_hour(now) - timedelta(days=45)
    span_hours = int((now - first) / HOUR)
    rows = []
    for _ in range(count):
        # Half start on a whole hour (or a few seconds either side), the rest anywhere.
        hour = first + generator.randrange(span_hours) * HOUR
        started = generator.choice(
            [
                hour,
                hour - timedelta(seconds=1),
                hour + timedelta(seconds=1),
                hour + timedelta(seconds=generator.randrange(3600)),
                hour + timedelta(seconds=generator.randrange(3600)),
            ]
        )
        if started >= now - timedelta(minutes=1):
            continue
        length = generator.choice(
            [
                timedelta(seconds=generator.randrange(1, 600)),
                timedelta(minutes=generator.randrange(1, 180)),
                timedelta(hours=generator.randrange(1, 30)),
                HOUR,  # ends exactly on the next hour
                timedelta(0),  # ended in its first instant
                -timedelta(minutes=5),  # ended by a transaction begun before the activation committed
            ]
        )
        kind = generator.choice(["ended", "ended", "ended", "expired", "lapsed", "live", "ended_early"])
        person, machine = generator.choice(people), generator.choice(machines)
        session = EngineSession(pool=pool, user=person, machine=machine, hostname=machine.hostname, started_at=started)
        end = started + length
        if kind == "live" or end >= now:
            session.last_heartbeat_at = now - timedelta(seconds=generator.randrange(60))
            session.lease_expires_at = now + timedelta(seconds=generator.randrange(30, 300))
        elif kind == "lapsed":  # the lease ran out and nothing has marked it expired yet
            session.last_heartbeat_at = max(started, end - lease)
            session.lease_expires_at = end
        elif kind == "expired":  # marked expired at its lease's end, as expire_sessions does
            session.last_heartbeat_at = max(started, end - lease)
            session.lease_expires_at = end
            session.ended_at, session.end_reason = end, EndReason.EXPIRED
        elif kind == "ended_early":  # released or withdrawn well before its lease ran out
            session.last_heartbeat_at = started
            session.lease_expires_at = max(started, end) + lease
            session.ended_at, session.end_reason = end, EndReason.WITHDRAWN
        else:
            session.last_heartbeat_at = max(started, end)
            session.lease_expires_at = max(started, end) + lease
            session.ended_at, session.end_reason = end, EndReason.RELEASED
        rows.append(session)
    EngineSession.objects.bulk_create(rows)


def edge_sessions(pool, person, machine, now):
    """Sessions that end, begin or are recorded as ending exactly at the first instant of each
    range, and one held across it."""
    rows = []
    for period in periods(now):
        edge = period.start
        for started, ended in (
            (edge - HOUR, edge),
            (edge, edge + HOUR),
            (edge - HOUR, edge + HOUR),
            (edge + timedelta(minutes=2), edge),
            (edge, edge),
        ):
            if ended < now - timedelta(minutes=1):
                rows.append(
                    EngineSession(
                        pool=pool,
                        user=person,
                        machine=machine,
                        started_at=started,
                        last_heartbeat_at=started,
                        lease_expires_at=max(started, ended) + timedelta(minutes=5),
                        ended_at=ended,
                        end_reason=EndReason.RELEASED,
                    )
                )
    EngineSession.objects.bulk_create(rows)


@pytest.fixture
def busy_pool(organization):
    pool = factories.LicensePoolFactory(
        organization=organization, product="RE", quota=50, starts_at=timezone.now() - timedelta(days=400)
    )
    people = factories.UserFactory.create_batch(4)
    for person in people:
        factories.MembershipFactory(organization=organization, user=person)
    machines = factories.MachineFactory.create_batch(5, pool=pool)
    return pool, people, machines


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rolled_up_usage_equals_a_scan_of_every_session(busy_pool, other_organization, seed):
    """On random sessions across hour and day edges (lapsed leases, live ones, ones ended early or in
    their first instant, ones recorded as ending before they began), the peaks and counts read from
    the rollup equal the scan's for every range: when rolled up at once, in steps, and after the
    portal has since ended, extended, expired and started sessions."""
    pool, people, machines = busy_pool
    generator = random.Random(seed)
    now = timezone.now()
    random_sessions(pool, people, machines, now, generator, 400)
    edge_sessions(pool, people[1], machines[1], now)
    # Another pool's sessions are never counted.
    other_pool = factories.LicensePoolFactory(organization=other_organization, product="RE")
    random_sessions(other_pool, people, factories.MachineFactory.create_batch(2, pool=other_pool), now, generator, 50)

    # Rolled up in steps of a few days, so sessions held across each step's end carry over.
    step = floor_hour(now) - timedelta(days=44)
    while roll_up(pool.pk, until=step):
        step += timedelta(days=generator.randint(1, 9), hours=generator.randint(0, 23))
    roll_up(pool.pk)
    state = UsageRollup.objects.get(pool=pool)
    assert state.rolled_up_to == floor_hour(timezone.now() - ROLLUP_DELAY)
    assert state.held_sessions, "some sessions are held across the last roll-up"
    assert UsageHour.objects.filter(pool=pool).count() > 24 * 20
    assert_same_as_a_scan(pool, now)

    # What the portal does afterwards: engines heartbeat, admins end sessions, leases lapse and
    # are marked expired, new engines start. None of it changes a finished hour.
    live = list(EngineSession.objects.filter(pool=pool).live().select_related("user"))
    generator.shuffle(live)
    for session in live[: len(live) // 3]:
        actions.heartbeat(user=session.user, session_id=session.public_id)
    EngineSession.objects.filter(pk__in=[session.pk for session in live[len(live) // 3 :]]).end(EndReason.WITHDRAWN)
    EngineSession.objects.filter(pool=pool).lapsed().end(EndReason.EXPIRED)
    for machine in machines[:3]:
        factories.EngineSessionFactory(pool=pool, machine=machine, user=people[0])
    now = timezone.now()
    roll_up(pool.pk)
    assert_same_as_a_scan(pool, now)


def test_a_pool_without_sessions_rolls_up_to_empty_hours(re_pool):
    """A pool nobody has used shows zero peaks and no sessions, and its rollup stores no hours."""
    now = timezone.now()
    assert_same_as_a_scan(re_pool, now)
    assert not UsageHour.objects.filter(pool=re_pool).exists()
    assert UsageRollup.objects.filter(pool=re_pool).exists()


def test_the_first_session_after_the_rollup_began_counts(re_pool, owner):
    """A pool rolled up while it had no sessions still counts the sessions that come later."""
    roll_up(re_pool.pk)
    machine = factories.MachineFactory(pool=re_pool)
    factories.EngineSessionFactory(pool=re_pool, machine=machine, user=owner)
    now = timezone.now()
    used = usage_in_period(pool=re_pool, period=preset_period("24h", now), now=now)
    assert used.buckets[-1].peak == 1
    assert used.sessions_held == 1


def test_a_period_ending_inside_a_rolled_up_hour_is_scanned(re_pool, owner):
    """When the page's clock is behind the database's by more than the roll-up delay, the period
    ends inside a rolled-up hour: the page falls back to scanning, with the same result."""
    machine = factories.MachineFactory(pool=re_pool)
    started = floor_hour(timezone.now()) - timedelta(hours=5)
    factories.EngineSessionFactory(
        pool=re_pool,
        machine=machine,
        user=owner,
        started_at=started,
        lease_expires_at=started + timedelta(hours=2),
        ended_at=started + timedelta(hours=2),
        end_reason=EndReason.RELEASED,
    )
    roll_up(re_pool.pk)
    lagging_clock = started + timedelta(hours=1, minutes=30)
    period = custom_period(lagging_clock.date(), lagging_clock.date(), lagging_clock)
    used = usage_in_period(pool=re_pool, period=period, now=lagging_clock)
    assert used.sessions_held is None  # left to the caller to count
    assert [b.peak for b in used.buckets] == [
        b.peak for b in peak_by_bucket(pool=re_pool, period=period, now=lagging_clock)
    ]


def test_whole_days_are_hours(re_pool):
    """Every bucket of every range starts on a whole UTC hour: what lets the rollup answer them."""
    now = timezone.now()
    for period in periods(now):
        assert all(start == floor_hour(start) for start in period.bucket_starts()), period.description
    assert floor_hour(datetime.combine(date(2026, 3, 29), time(1, 30), tzinfo=UTC)).hour == 1


@pytest.fixture
def rolled_up_history(busy_pool):
    """A week of the pool's sessions, rolled up."""
    pool, people, machines = busy_pool
    now = timezone.now()
    random_sessions(pool, people, machines, now, random.Random(9), 150)
    roll_up(pool.pk)
    assert UsageHour.objects.filter(pool=pool).exists()
    return pool, people, machines


def test_deleting_a_person_forgets_their_sessions_past_usage(rolled_up_history):
    """An operator deleting a person deletes their sessions; the usage page then counts without
    them, as a scan would."""
    pool, people, _machines = rolled_up_history
    people[0].delete()
    assert_same_as_a_scan(pool, timezone.now())


def test_deleting_a_machine_forgets_its_sessions_past_usage(rolled_up_history):
    pool, _people, machines = rolled_up_history
    machines[0].delete()
    assert_same_as_a_scan(pool, timezone.now())


def test_expire_sessions_rolls_up_every_pool_behind(busy_pool, kse_pool):
    """The periodic job rolls finished hours up for every pool, so pages rarely have to."""
    pool, people, machines = busy_pool
    now = timezone.now()
    random_sessions(pool, people, machines, now, random.Random(4), 60)
    out = StringIO()
    call_command("expire_sessions", stdout=out)
    target = floor_hour(timezone.now() - ROLLUP_DELAY)
    assert set(UsageRollup.objects.values_list("pool_id", "rolled_up_to")) == {(pool.pk, target), (kse_pool.pk, target)}
    assert "Rolled up" in out.getvalue()
    call_command("expire_sessions", stdout=out)
    assert out.getvalue().endswith("Rolled up 0 hours of usage.\n")
    assert_same_as_a_scan(pool, now)


def test_a_lease_that_lapsed_on_the_hour_is_not_held_in_the_hour_after(busy_pool):
    """A session whose lease ran out exactly as an hour began (never marked expired) held nothing in
    that hour: the rolled-up count agrees with the history, as the scan does."""
    pool, people, machines = busy_pool
    now = timezone.now()
    hour = floor_hour(now) - timedelta(days=2)
    EngineSession.objects.bulk_create(
        [
            EngineSession(pool=pool, user=people[0], machine=machines[0], started_at=hour, lease_expires_at=hour),
            EngineSession(
                pool=pool,
                user=people[1],
                machine=machines[1],
                started_at=hour - HOUR,
                lease_expires_at=hour + timedelta(minutes=5),
            ),
        ]
    )
    roll_up(pool.pk)
    period = Period(hour, hour + HOUR, HOURLY, "the hour")
    assert usage_in_period(pool=pool, period=period, now=now).sessions_held == 1
    assert_same_as_a_scan(pool, now)
