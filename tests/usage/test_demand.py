"""Refusals and waits per bar of the usage page (licenses/demand.py): the two queries' figures are
those a plain computation over the same tickets and counters gives."""

import math
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from licenses.demand import Demand, demand_by_bar
from licenses.models import LicensePool
from licenses.usage import custom_period, preset_period
from sessions_app.models import QuotaRefusalHour, wait_resolution
from sessions_app.queue import count_wait
from tests import factories

NOW = datetime(2026, 11, 28, 15, 40, tzinfo=UTC)


def nearest_rank(waits, percentile):
    ordered = sorted(waits)
    return ordered[math.ceil(percentile * len(ordered) / 100) - 1]


def granted(pool, *, ended_at, waited):
    """An engine got a license at `ended_at` after waiting `waited`, counted as a granted poll does."""
    count_wait(pool.pk, granted_at=ended_at, waited=waited)


def kept(waits):
    """The waits as the counters keep them (wait_resolution)."""
    return [timedelta(seconds=wait_resolution(wait.total_seconds())) for wait in waits]


def test_each_bar_counts_its_refusals_and_ranks_its_waits(re_pool, other_organization):
    """Per hour of the last 24: refusals summed from the hourly counters, waits counted with their
    nearest-rank median and 95th percentile, by the hour the license was granted; other pools and
    times outside the period count nowhere."""
    period = preset_period("24h", NOW)
    hour = NOW.replace(minute=0, second=0, microsecond=0)
    waits_at_14 = [timedelta(seconds=s) for s in (5, 90, 12, 600, 33, 47, 2, 8, 300, 61, 75)]
    for n, waited in enumerate(waits_at_14):
        granted(re_pool, ended_at=hour - timedelta(minutes=50 - n), waited=waited)
    granted(re_pool, ended_at=hour + timedelta(minutes=5), waited=timedelta(minutes=20))
    granted(re_pool, ended_at=period.start - timedelta(seconds=1), waited=timedelta(hours=2))
    elsewhere = factories.LicensePoolFactory(organization=other_organization, product="RE")
    granted(elsewhere, ended_at=hour - timedelta(minutes=30), waited=timedelta(hours=1))
    QuotaRefusalHour.objects.bulk_create(
        [
            QuotaRefusalHour(pool=re_pool, hour=hour - timedelta(hours=1), refusals=7),
            QuotaRefusalHour(pool=re_pool, hour=hour - timedelta(hours=3), refusals=2),
            QuotaRefusalHour(pool=re_pool, hour=period.start - timedelta(hours=1), refusals=50),
            QuotaRefusalHour(pool=elsewhere, hour=hour - timedelta(hours=1), refusals=9),
        ]
    )

    bars, overall = demand_by_bar(pool=re_pool, period=period)

    assert len(bars) == 24
    assert bars[-2] == Demand(
        refused=7,
        waits=11,
        median_wait=nearest_rank(waits_at_14, 50),
        p95_wait=nearest_rank(waits_at_14, 95),
    )
    assert (bars[-2].median_wait, bars[-2].p95_wait) == (timedelta(seconds=47), timedelta(seconds=600))
    assert bars[-1] == Demand(waits=1, median_wait=timedelta(minutes=20), p95_wait=timedelta(minutes=20))
    assert bars[-4] == Demand(refused=2)
    assert sum(bar.waits for bar in bars) == 12
    everything = [*waits_at_14, timedelta(minutes=20)]
    assert overall == Demand(
        refused=9, waits=12, median_wait=nearest_rank(everything, 50), p95_wait=nearest_rank(everything, 95)
    )


def test_months_and_weeks_take_the_waits_of_all_their_hours(re_pool):
    """Long ranges put each wait in the month (or week) it ended in, at bar edges included."""
    period = preset_period("12m", NOW)
    first_of_november = datetime(2026, 11, 1, tzinfo=UTC)
    granted(re_pool, ended_at=first_of_november, waited=timedelta(seconds=10))
    granted(re_pool, ended_at=first_of_november - timedelta(microseconds=1), waited=timedelta(seconds=20))
    QuotaRefusalHour.objects.create(pool=re_pool, hour=first_of_november - timedelta(hours=1), refusals=4)
    bars, _ = demand_by_bar(pool=re_pool, period=period)
    assert [(bar.waits, bar.refused) for bar in bars[-2:]] == [(1, 4), (1, 0)]
    assert bars[-1].median_wait == timedelta(seconds=10)

    weeks = custom_period(datetime(2026, 5, 1).date(), datetime(2026, 11, 27).date(), NOW)
    bars, overall = demand_by_bar(pool=re_pool, period=weeks)
    assert weeks.granularity.name == "week"
    assert overall.waits == 2 and sum(bar.waits for bar in bars) == 2


@pytest.mark.parametrize("count", [1, 2, 19, 20, 21, 100])
def test_percentiles_are_nearest_rank_for_any_number_of_waits(re_pool, count):
    hour = NOW.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    waits = [timedelta(seconds=(n * 37) % 101 + n) for n in range(count)]
    for n, waited in enumerate(waits):
        granted(re_pool, ended_at=hour + timedelta(seconds=n), waited=waited)
    bars, overall = demand_by_bar(pool=re_pool, period=preset_period("24h", NOW))
    (bar,) = [bar for bar in bars if bar.waits]
    assert (bar.median_wait, bar.p95_wait) == (nearest_rank(waits, 50), nearest_rank(waits, 95))
    assert (overall.median_wait, overall.p95_wait) == (bar.median_wait, bar.p95_wait)


def test_long_waits_are_kept_to_ten_seconds_then_to_the_minute(re_pool):
    """Below ten minutes a wait is kept to the second, below an hour to ten seconds, beyond to the
    minute (rounded down); the percentiles are those of the kept waits."""
    assert [wait_resolution(s) for s in (0, 599.9, 600, 609, 3599, 3600, 3661, 86_399)] == [
        0,
        599,
        600,
        600,
        3590,
        3600,
        3660,
        86_340,
    ]
    hour = NOW.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    waits = [timedelta(seconds=s) for s in (601, 1234, 4000, 4001, 7259)]
    for n, waited in enumerate(waits):
        granted(re_pool, ended_at=hour + timedelta(minutes=n), waited=waited)
    _, overall = demand_by_bar(pool=re_pool, period=preset_period("24h", NOW))
    assert overall.waits == 5
    assert (overall.median_wait, overall.p95_wait) == (nearest_rank(kept(waits), 50), nearest_rank(kept(waits), 95))
    assert (overall.median_wait, overall.p95_wait) == (timedelta(seconds=3960), timedelta(seconds=7200))


def test_a_pool_without_demand_shows_none(re_pool):
    bars, overall = demand_by_bar(pool=re_pool, period=preset_period("7d", NOW))
    assert bars == [Demand()] * 28
    assert overall == Demand()


@pytest.mark.django_db
def test_the_demo_history_has_waits_and_refusals_to_show():
    """seed_demo's 30 days: some engines waited in line (never past their half hour) and some were
    refused, so the usage page's demand figures have something to show."""
    call_command("seed_demo", "--once", stdout=StringIO())
    pool = LicensePool.objects.get(organization__name="Demo QA", product="RE")
    _, overall = demand_by_bar(pool=pool, period=preset_period("30d", timezone.now()))
    assert overall.waits > 0 and overall.refused > 0
    assert timedelta(0) < overall.median_wait <= overall.p95_wait <= timedelta(minutes=30)
