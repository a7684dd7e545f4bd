import itertools
import random
from datetime import UTC, datetime, time, timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from licenses.models import LicensePool
from licenses.usage import custom_period, peak_by_bucket, preset_period
from organizations.models import Organization
from sessions_app.models import EndReason, EngineSession
from tests import factories
from tests.usage.conftest import ended_session, live_session


def held_spans(sessions, now):
    """[start, end) of every session as the raw rows say: ended_at, else the lease's end, never past now."""
    spans = []
    for session in sessions:
        end = session.ended_at or min(session.lease_expires_at, now)
        if end > session.started_at:
            spans.append((session.started_at, end))
    return spans


def true_peaks(spans, bounds):
    """The most sessions held at once in each [start, end) of `bounds`, by a sweep over the raw
    spans in Python: at equal times an end comes before a start, since [start, end) do not meet."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    peaks, level, index = [], 0, 0
    for bucket_start, bucket_end in bounds:
        while index < len(events) and events[index][0] <= bucket_start:
            level += events[index][1]
            index += 1
        peak = level
        while index < len(events) and events[index][0] < bucket_end:
            level += events[index][1]
            peak = max(peak, level)
            index += 1
        peaks.append(peak)
    return peaks


def daily_bounds(now, days=30):
    midnight = datetime.combine(now.date(), time.min, tzinfo=UTC)
    starts = [midnight - timedelta(days=days - 1 - n) for n in range(days)]
    return list(zip(starts, [*starts[1:], now], strict=True))


@pytest.fixture
def history(re_pool, kse_pool, other_organization):
    """A month of sessions of the RE pool: random ones, ones across midnight, back-to-back ones,
    live ones, a lapsed lease never marked ended, one begun before the range; plus sessions of
    another pool and another organization that must not count."""
    now = timezone.now()
    today = datetime.combine(now.date(), time.min, tzinfo=UTC)
    people = factories.UserFactory.create_batch(3)
    machines = factories.MachineFactory.create_batch(4, pool=re_pool)
    generator = random.Random(5)
    rows = []
    for _ in range(250):
        started = today - timedelta(days=30) + timedelta(minutes=generator.randint(0, 30 * 24 * 60))
        ended = started + timedelta(minutes=generator.randint(1, 26 * 60))
        if ended < now:
            rows.append(
                ended_session(
                    re_pool,
                    user=generator.choice(people),
                    machine=generator.choice(machines),
                    started_at=started,
                    ended_at=ended,
                )
            )
    user, machine = people[0], machines[0]
    for days_ago in (3, 7, 12):
        midnight = today - timedelta(days=days_ago)
        rows += [
            # Across midnight, and one starting exactly at it.
            ended_session(
                re_pool,
                user=user,
                machine=machine,
                started_at=midnight - timedelta(hours=2),
                ended_at=midnight + timedelta(hours=3),
            ),
            ended_session(
                re_pool, user=user, machine=machine, started_at=midnight, ended_at=midnight + timedelta(hours=1)
            ),
            # Back to back: one ends at the instant the next starts.
            ended_session(
                re_pool,
                user=user,
                machine=machine,
                started_at=midnight + timedelta(hours=5),
                ended_at=midnight + timedelta(hours=6),
            ),
            ended_session(
                re_pool,
                user=user,
                machine=machine,
                started_at=midnight + timedelta(hours=6),
                ended_at=midnight + timedelta(hours=7),
            ),
        ]
    rows += [
        ended_session(
            re_pool,
            user=user,
            machine=machine,
            started_at=today - timedelta(days=45),
            ended_at=today - timedelta(days=26),
        ),
        live_session(re_pool, user=user, machine=machine, started_at=today - timedelta(days=2, hours=1)),
        live_session(re_pool, user=people[1], machine=machines[1], started_at=now - timedelta(minutes=30)),
        # A lease that lapsed three days ago and was never marked ended stops counting then.
        EngineSession(
            pool=re_pool,
            user=user,
            machine=machine,
            started_at=today - timedelta(days=5),
            last_heartbeat_at=today - timedelta(days=3),
            lease_expires_at=today - timedelta(days=3, minutes=-5),
        ),
    ]
    EngineSession.objects.bulk_create(rows)
    # Noise that must not be counted: the KSE pool and another organization's RE pool.
    kse_machine = factories.MachineFactory(pool=kse_pool)
    other_pool = factories.LicensePoolFactory(organization=other_organization, product="RE")
    other_machine = factories.MachineFactory(pool=other_pool)
    noise = []
    for days_ago in range(30):
        started = today - timedelta(days=days_ago) + timedelta(hours=9)
        for _ in range(6):
            noise.append(
                ended_session(
                    kse_pool, user=user, machine=kse_machine, started_at=started, ended_at=started + timedelta(hours=4)
                )
            )
            noise.append(
                ended_session(
                    other_pool,
                    user=user,
                    machine=other_machine,
                    started_at=started,
                    ended_at=started + timedelta(hours=4),
                )
            )
    EngineSession.objects.bulk_create(noise)
    return re_pool


def test_daily_peaks_equal_a_sweep_over_the_raw_rows(history):
    """The peak of each day of the last 30 equals the most sessions held at once that day, counted
    from the raw rows: sessions across midnight count on both days, live ones up to now, a lapsed
    lease until it lapsed, and back-to-back sessions never overlap."""
    now = timezone.now()
    period = preset_period("30d", now)
    buckets = peak_by_bucket(pool=history, period=period, now=now)
    bounds = daily_bounds(now)
    assert [(bucket.start, bucket.end) for bucket in buckets] == bounds
    expected = true_peaks(held_spans(EngineSession.objects.filter(pool=history), now), bounds)
    assert [bucket.peak for bucket in buckets] == expected
    assert max(expected) > 1  # the data exercises overlap, not just single sessions


@pytest.mark.parametrize("name", ["24h", "7d", "12m"])
def test_peaks_of_every_range_equal_a_sweep(history, name):
    """Hourly, six-hourly and monthly buckets agree with the sweep too."""
    now = timezone.now()
    period = preset_period(name, now)
    buckets = peak_by_bucket(pool=history, period=period, now=now)
    bounds = [(bucket.start, bucket.end) for bucket in buckets]
    assert bounds[0][0] == period.start and bounds[-1][1] == now
    assert all(earlier[1] == later[0] for earlier, later in itertools.pairwise(bounds))
    expected = true_peaks(held_spans(EngineSession.objects.filter(pool=history), now), bounds)
    assert [bucket.peak for bucket in buckets] == expected


def test_custom_dates_are_whole_days(history):
    """Custom dates cover whole UTC days from the first to the last, inclusive."""
    now = timezone.now()
    first, last = (now - timedelta(days=20)).date(), (now - timedelta(days=10)).date()
    period = custom_period(first, last, now)
    buckets = peak_by_bucket(pool=history, period=period, now=now)
    assert buckets[0].start == datetime.combine(first, time.min, tzinfo=UTC)
    assert buckets[-1].end == datetime.combine(last, time.min, tzinfo=UTC) + timedelta(days=1)
    bounds = [(bucket.start, bucket.end) for bucket in buckets]
    assert [b.peak for b in buckets] == true_peaks(held_spans(EngineSession.objects.filter(pool=history), now), bounds)


def test_a_live_session_counts_in_every_bucket_up_to_now(re_pool, owner):
    """A session started two days ago and still live counts in each day since."""
    now = timezone.now()
    machine = factories.MachineFactory(pool=re_pool)
    live_session(re_pool, user=owner, machine=machine, started_at=now - timedelta(days=2)).save()
    buckets = peak_by_bucket(pool=re_pool, period=preset_period("30d", now), now=now)
    assert [bucket.peak for bucket in buckets][-3:] == [1, 1, 1]
    assert sum(bucket.peak for bucket in buckets) == 3


@pytest.mark.django_db
def test_seed_demo_history_peaks_equal_a_sweep():
    """With 30 days of seed_demo history, each day's peak equals the sweep over the raw rows."""
    call_command("seed_demo", history_days=30, members=20, machines=12, sessions=6, seed=7)
    pool = LicensePool.objects.get(organization=Organization.objects.get(name="Demo QA"), product="RE")
    now = timezone.now()
    buckets = peak_by_bucket(pool=pool, period=preset_period("30d", now), now=now)
    sessions = EngineSession.objects.filter(pool=pool)
    spans = held_spans(sessions, now)
    assert any(start.date() != end.date() for start, end in spans), "seed_demo has sessions across midnight"
    assert sessions.filter(ended_at__isnull=True).exists(), "seed_demo has live sessions"
    assert [bucket.peak for bucket in buckets] == true_peaks(spans, daily_bounds(now))
    assert sessions.exclude(end_reason="").filter(end_reason__in=EndReason.values).count() > 100
