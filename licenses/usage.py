"""How much of a pool was used, and when: the peak of concurrent sessions per time bucket, computed
in the database, and the session history behind it."""

import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db import connection, transaction
from django.db.models import Case, CharField, Count, DateTimeField, F, IntegerField, Max, Q, Sum, Value, When
from django.db.models.functions import Coalesce, Least, Now, TruncHour

from sessions_app.models import EngineSession

from .models import LicensePool, UsageHour, UsageRollup

HOUR = timedelta(hours=1)
SIX_HOURS = timedelta(hours=6)
DAY = timedelta(days=1)

RANGE_CHOICES = [
    ("24h", "Last 24 hours"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("12m", "Last 12 months"),
    ("custom", "Custom dates"),
]
DEFAULT_RANGE = "30d"
# Longer custom ranges would draw bars too thin to read and scan years of history for one page.
MAX_CUSTOM_DAYS = 5 * 366

LIVE = "live"


@dataclass(frozen=True)
class Granularity:
    name: str  # "hour", "6 hours", "day", "week", "month": says what one bar stands for
    label_format: str
    step: timedelta | None  # None for months, whose length varies

    def after(self, moment):
        """The start of the bucket after the one starting at `moment`."""
        if self.step is not None:
            return moment + self.step
        year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        return moment.replace(year=year, month=month, day=1)


HOURLY = Granularity("hour", "%H:%M", timedelta(hours=1))
SIX_HOURLY = Granularity("6 hours", "%a %d %H:%M", timedelta(hours=6))
DAILY = Granularity("day", "%d %b", timedelta(days=1))
WEEKLY = Granularity("week", "%d %b", timedelta(days=7))
MONTHLY = Granularity("month", "%b %Y", None)


@dataclass(frozen=True)
class Period:
    """The stretch of time a usage page shows: [start, end), cut into buckets of one granularity."""

    start: datetime
    end: datetime
    granularity: Granularity
    description: str

    def bucket_starts(self):
        """The start of every bucket, in order; the first is `start`."""
        starts = []
        current = self.start
        while current < self.end:
            starts.append(current)
            current = self.granularity.after(current)
        return starts


def _midnight(day):
    return datetime.combine(day, time.min, tzinfo=UTC)


def preset_period(name, now):
    """A named range ending now. Buckets are aligned to whole hours, quarter days, days and months
    (UTC) so that a bar means the same thing whenever the page is opened; the last one is partial."""
    now = now.astimezone(UTC)
    if name == "24h":
        hour = now.replace(minute=0, second=0, microsecond=0)
        return Period(hour - 23 * HOUR, now, HOURLY, "the last 24 hours")
    if name == "7d":
        quarter = now.replace(hour=now.hour - now.hour % 6, minute=0, second=0, microsecond=0)
        return Period(quarter - 27 * SIX_HOURS, now, SIX_HOURLY, "the last 7 days")
    if name == "12m":
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        year, month = (first.year - 1, first.month + 1) if first.month < 12 else (first.year, 1)
        return Period(first.replace(year=year, month=month), now, MONTHLY, "the last 12 months")
    return Period(_midnight(now.date()) - 29 * DAY, now, DAILY, "the last 30 days")


def custom_period(first_day: date, last_day: date, now):
    """The whole days from first_day to last_day (inclusive), never past now."""
    start = _midnight(first_day)
    end = min(_midnight(last_day) + DAY, now)
    days = (end - start) / DAY
    if days <= 2:
        granularity = HOURLY
    elif days <= 14:
        granularity = SIX_HOURLY
    elif days <= 120:
        granularity = DAILY
    elif days <= 400:
        granularity = WEEKLY
    else:
        granularity = MONTHLY
    description = f"{first_day:%d %b %Y} to {last_day:%d %b %Y}"
    return Period(start, end, granularity, description)


@dataclass(frozen=True)
class Bucket:
    start: datetime
    end: datetime
    peak: int

    def label(self, granularity):
        return self.start.strftime(granularity.label_format)


# The peak of concurrent sessions per bucket, as one sweep in the database.
#
# Each session occupies [start, end): end is ended_at, or for a session not ended min(lease
# expiry, now), because a lapsed lease stops holding its license the moment it lapses and a live one
# holds it until now. Every session becomes a +1 event at its start and a -1 event at its end, and a
# running SUM() OVER (ORDER BY t) gives the number of sessions held at each event. The frame is the
# default RANGE frame, so all events at one instant are summed together: a session ending at t and
# another starting at t never overlap, as [start, end) says.
#
# This stays right across bucket edges because a session is not counted per bucket at all: it
# contributes one step up and one step down to a single running total. A zero event at each bucket's
# start carries in the level reached before it (a session that began last night and is still running
# counts in every bucket up to now), and sessions that began before the range are clipped to its
# start so their +1 lands in the first bucket. A live session's -1 lands at now, the range's end, so
# it counts in every bucket to the last. Each event takes the number of the latest bucket start at or
# before it (a running MAX over bucket starts, which sort first among equal times), and the peak of a
# bucket is the highest level among its events, the carried-in level included.
PEAK_SQL = """
WITH bucket(n, t) AS (VALUES {bucket_rows}),
span AS (
    SELECT CASE WHEN started_at < %s THEN %s ELSE started_at END AS s,
           CASE WHEN ended_at IS NOT NULL THEN ended_at
                WHEN lease_expires_at < %s THEN lease_expires_at
                ELSE %s END AS e
    FROM {session_table}
    WHERE pool_id = %s AND started_at < %s
      AND (ended_at > %s OR (ended_at IS NULL AND lease_expires_at > %s))
),
event AS (
    SELECT t, 0 AS kind, 0 AS delta, n FROM bucket
    UNION ALL SELECT s, 1, 1, NULL FROM span WHERE e > s
    UNION ALL SELECT e, 1, -1, NULL FROM span WHERE e > s
),
level AS (
    SELECT t,
           SUM(delta) OVER (ORDER BY t) AS concurrent,
           MAX(n) OVER (ORDER BY t, kind ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS n
    FROM event
)
SELECT n, MAX(concurrent) FROM level WHERE t < %s GROUP BY n ORDER BY n
"""


def peak_by_bucket(*, pool, period, now):
    """The buckets of `period` with the highest number of the pool's sessions held at once in each."""
    starts = period.bucket_starts()
    if not starts:
        return []
    adapt = connection.ops.adapt_datetimefield_value
    bucket_params = []
    for number, start in enumerate(starts):
        bucket_params += [number, adapt(start)]
    range_start, range_end, clock = adapt(period.start), adapt(period.end), adapt(now)
    sql = PEAK_SQL.format(
        bucket_rows=", ".join(["(%s, %s)"] * len(starts)),
        session_table=connection.ops.quote_name(EngineSession._meta.db_table),
    )
    params = [
        *bucket_params,
        range_start,
        range_start,
        clock,
        clock,
        pool.pk,
        range_end,
        range_start,
        range_start,
        range_end,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        peaks = {number: int(peak) for number, peak in cursor.fetchall()}
    ends = [*starts[1:], period.end]
    return [
        Bucket(start, end, peaks.get(number, 0)) for number, (start, end) in enumerate(zip(starts, ends, strict=True))
    ]


# The same peaks without scanning the period's sessions: finished hours are rolled up once.
#
# Why a finished hour never changes. The level at time t (sessions held at t) depends only on each
# session's [start, end), and no write of the portal moves any part of that interval that lies more
# than ROLLUP_DELAY in the past:
# - an activation starts a session at its transaction's clock (Now()), which is at most a
#   transaction's length before it commits;
# - a heartbeat only extends a lease that is still running at its transaction's clock, so it moves
#   an end that lies after that clock, into the future;
# - ending a live session records the ending transaction's clock, after which it held nothing (it
#   held its license until then either way), and ending a lapsed lease records the lease's end,
#   which is where the session's end already was.
# So as long as every transaction that writes sessions commits within ROLLUP_DELAY of starting
# (they take milliseconds; the delay is minutes), the level at any t earlier than ROLLUP_DELAY before
# the database's clock is final. The same bound keeps every session's recorded end less than
# ROLLUP_DELAY (so less than an hour) before its start: an ending transaction can only see a
# session whose activation has committed.
#
# What is rolled up, per pool and finished hour h (UsageHour): the peak, the highest level during
# [h, h+1h) exactly as PEAK_SQL defines it; `held_at_start`, the sessions begun before h and held
# past it; `started`, the sessions begun during the hour; and `ended_before_start`, those of them
# recorded as ending at or before h. A bucket of the chart is a whole number of hours (every
# granularity starts on a UTC hour), and the highest level over a union of hours is the highest of
# their peaks, so a bucket's peak is the maximum of its hours' peaks: exactly PEAK_SQL's, with no
# session read. The session history's count, sessions begun before the period's end that held a
# license after its start, is held_at_start of its first hour, plus the sessions begun in its hours,
# less those of the first hour recorded as ending by its start (an earlier start than that would
# need an end more than an hour before the start, see above).
#
# Rolling up and the unfinished tail. UsageRollup says up to which hour (W) a pool is rolled up and
# which sessions begun before W still held a license at W. A session that overlaps any time after
# W either began at or after W (the (pool, started_at) index finds those) or is one of those held
# sessions, so neither the next roll-up nor a page's live tail reads any older session. Rolling up
# happens in expire_sessions (cron, every minute) and lazily when a page finds the rollup behind,
# under a lock on the UsageRollup row only: never the pool's, so no activation waits for it, and
# activations, heartbeats and releases write nothing more than before. A page reads the rolled-up
# hours of its period and computes the hours from W to now from their sessions, as PEAK_SQL would.
ROLLUP_DELAY = timedelta(minutes=15)

# Per hour from `since`: the highest level at any event of the hour (the running sum over events in
# time order, all events of one instant summed together, as in PEAK_SQL), the net change over the
# hour, and the net change and the number of ends at the hour's first instant. The window runs over
# every event read, including the starts before `since` of sessions still held then, so the levels
# are the real ones; Python carries the level across hours without events.
HOURLY_SQL = """
WITH span AS (
    SELECT started_at AS s,
           CASE WHEN ended_at IS NOT NULL THEN ended_at
                WHEN lease_expires_at < %s THEN lease_expires_at
                ELSE %s END AS e
    FROM {session_table}
    WHERE pool_id = %s AND ((started_at >= %s AND started_at < %s) OR {held})
),
event AS (
    SELECT s AS t, 1 AS delta FROM span WHERE e > s
    UNION ALL SELECT e, -1 FROM span WHERE e > s
),
level AS (
    SELECT t, delta, SUM(delta) OVER (ORDER BY t) AS concurrent FROM event
),
hourly AS (
    SELECT {hour} AS hour, t, delta, concurrent FROM level WHERE t >= %s AND t < %s
)
SELECT hour, MAX(concurrent), SUM(delta),
       SUM(CASE WHEN t = hour THEN delta ELSE 0 END),
       SUM(CASE WHEN t = hour AND delta < 0 THEN 1 ELSE 0 END)
FROM hourly GROUP BY hour ORDER BY hour
"""


def floor_hour(moment):
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _as_utc(value):
    """A datetime from a raw cursor: aware on PostgreSQL, text on SQLite."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class HourFigures:
    start: datetime
    peak: int
    held_at_start: int


def hourly_figures(*, pool_id, since, until, held_sessions, clock):
    """Each hour from `since` (a whole hour) until `until` (the last may be partial): its peak and the
    sessions begun before it and held at its start. `held_sessions` are the ids of the sessions begun
    before `since` and held past it; no other session begun before `since` is read."""
    adapt = connection.ops.adapt_datetimefield_value
    hour_sql, hour_params = connection.ops.datetime_trunc_sql("hour", "t", (), None)
    if connection.vendor == "postgresql":
        held, held_params = "id = ANY(%s::bigint[])", [list(held_sessions)]
    else:
        held, held_params = "id IN (SELECT value FROM json_each(%s))", [json.dumps(list(held_sessions))]
    sql = HOURLY_SQL.format(
        session_table=connection.ops.quote_name(EngineSession._meta.db_table), held=held, hour=hour_sql
    )
    params = [
        adapt(clock),
        adapt(clock),
        pool_id,
        adapt(since),
        adapt(until),
        *held_params,
        *hour_params,
        adapt(since),
        adapt(until),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        by_hour = {_as_utc(row[0]): row[1:] for row in cursor.fetchall()}
    figures = []
    # Before `since` only the held sessions had begun, and all of them were still held.
    level = len(held_sessions)
    hour = since
    while hour < until:
        highest, net, net_at_start, ends_at_start = by_hour.get(hour, (None, 0, 0, 0))
        at_start = level + int(net_at_start)
        peak = at_start if highest is None else max(at_start, int(highest))
        figures.append(HourFigures(hour, peak, level - int(ends_at_start)))
        level += int(net)
        hour += HOUR
    return figures


def roll_up(pool_id, *, until=None):
    """Roll the pool's finished hours up to the last one that ended ROLLUP_DELAY ago by the
    database's clock, or only up to `until` (a whole hour) if that is earlier. A pool another
    process is rolling up right now is left to it. Returns the number of hours rolled up."""
    if not UsageRollup.objects.filter(pool_id=pool_id).exists():
        UsageRollup.objects.bulk_create(
            [UsageRollup(pool_id=pool_id, rolled_up_to=_origin(pool_id))], ignore_conflicts=True
        )
    with transaction.atomic():
        state = (
            UsageRollup.objects.select_for_update(skip_locked=True)
            .annotate(db_now=Now())
            .filter(pool_id=pool_id)
            .first()
        )
        if state is None:
            return 0
        target = floor_hour(state.db_now - ROLLUP_DELAY)
        if until is not None:
            target = min(target, until)
        since = state.rolled_up_to
        if target <= since:
            return 0
        held = state.held_sessions
        hours = hourly_figures(pool_id=pool_id, since=since, until=target, held_sessions=held, clock=state.db_now)
        begun = (
            EngineSession.objects.filter(pool_id=pool_id, started_at__gte=since, started_at__lt=target)
            .annotate(hour=TruncHour("started_at"))
            .values("hour")
            .annotate(
                started=Count("pk"),
                # By when each stopped holding its license: its recorded end, or a lapsed lease's end
                # (a lease that ran out by then is never renewed), as the session history reads it.
                ended_before_start=Count(
                    "pk",
                    filter=Q(ended_at__lte=F("hour")) | Q(ended_at__isnull=True, lease_expires_at__lte=F("hour")),
                ),
            )
            .order_by()
        )
        begun = {_as_utc(row["hour"]): row for row in begun}
        UsageHour.objects.bulk_create(
            [
                UsageHour(
                    pool_id=pool_id,
                    hour=figures.start,
                    peak=figures.peak,
                    held_at_start=figures.held_at_start,
                    started=begun[figures.start]["started"] if figures.start in begun else 0,
                    ended_before_start=begun[figures.start]["ended_before_start"] if figures.start in begun else 0,
                )
                for figures in hours
                if figures.peak or figures.start in begun
            ],
            batch_size=1000,
        )
        # Which sessions begun before the target are held past it: of those held at the last
        # roll-up and those begun since, the ones that end after it (a lease running past it, even
        # if it lapses later, ends after it).
        state.held_sessions = list(
            EngineSession.objects.filter(pool_id=pool_id)
            .filter(Q(started_at__gte=since, started_at__lt=target) | Q(pk__in=held))
            .filter(Q(ended_at__gt=target) | Q(ended_at__isnull=True, lease_expires_at__gt=target))
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        state.rolled_up_to = target
        state.save(update_fields=["rolled_up_to", "held_sessions"])
    return len(hours)


def roll_up_every_pool():
    """Roll up every pool whose rollup is behind; expire_sessions does this every minute, so pages
    rarely find one behind. Returns the number of hours rolled up."""
    rolled_to = dict(UsageRollup.objects.values_list("pool_id", "rolled_up_to"))
    hours = 0
    for pool_id, db_now in LicensePool.objects.annotate(db_now=Now()).values_list("pk", "db_now").order_by("pk"):
        if pool_id not in rolled_to or rolled_to[pool_id] < floor_hour(db_now - ROLLUP_DELAY):
            hours += roll_up(pool_id)
    return hours


@transaction.atomic
def forget_rollup(pool_ids):
    """Drop these pools' rollups, to be rolled up afresh from their sessions. Deleting sessions
    (an operator deleting a person or a machine) is the one change that rewrites finished hours."""
    UsageRollup.objects.filter(pool_id__in=pool_ids).delete()  # waits for a roll-up in progress
    UsageHour.objects.filter(pool_id__in=pool_ids).delete()


def _origin(pool_id):
    """Where a pool's rollup starts: the hour of its first session, or for a pool without sessions
    the last finished hour, by the database's clock (every later session begins after it)."""
    first = EngineSession.objects.filter(pool_id=pool_id).order_by("started_at").values_list("started_at", flat=True)
    first = first.first()
    if first is None:
        first = LicensePool.objects.filter(pk=pool_id).annotate(db_now=Now()).values_list("db_now", flat=True).get()
    return floor_hour(first - ROLLUP_DELAY)


@dataclass(frozen=True)
class PeriodUsage:
    buckets: list
    # Sessions that held a license at some time in the period, as the unfiltered session history
    # counts them; None when they were not counted here (the caller counts the history itself).
    sessions_held: int | None


def usage_in_period(*, pool, period, now):
    """The buckets of `period` with their peaks, and how many sessions held a license in it: what
    peak_by_bucket and counting the history give, from the rolled-up hours and a live tail."""
    state = UsageRollup.objects.filter(pool=pool).annotate(db_now=Now()).first()
    if state is None or state.rolled_up_to < floor_hour(state.db_now - ROLLUP_DELAY):
        roll_up(pool.pk)
        state = UsageRollup.objects.filter(pool=pool).first()
    starts = period.bucket_starts()
    if not starts:
        return PeriodUsage([], 0)
    rolled_to = state.rolled_up_to if state is not None else None
    if rolled_to is None or (floor_hour(period.end) < rolled_to and period.end != floor_hour(period.end)):
        # The period ends inside a rolled-up hour, which only happens when this host's clock is
        # behind the database's by more than ROLLUP_DELAY: the rollup cannot cut that hour.
        return PeriodUsage(peak_by_bucket(pool=pool, period=period, now=now), None)
    start, end = period.start, period.end
    rolled_end = min(rolled_to, end)
    peaks = [0] * len(starts)
    held_at_start = begun = 0
    if start < rolled_end:
        number = Case(
            *[When(hour__lt=bucket_start, then=Value(n)) for n, bucket_start in enumerate(starts[1:])],
            default=Value(len(starts) - 1),
            output_field=IntegerField(),
        )
        first_hour = Q(hour=start)
        for row in (
            UsageHour.objects.filter(pool=pool, hour__gte=start, hour__lt=rolled_end)
            .annotate(n=number)
            .values("n")
            .annotate(
                peak=Max("peak"),
                started=Sum("started"),
                held=Max(Case(When(first_hour, then=F("held_at_start")), default=0)),
                early=Max(Case(When(first_hour, then=F("ended_before_start")), default=0)),
            )
            .order_by()
        ):
            if row["peak"] is None:
                continue  # one bucket makes `n` a constant, and an empty aggregate a row of NULLs
            peaks[row["n"]] = row["peak"]
            begun += row["started"] - row["early"]
            held_at_start += row["held"]
    if rolled_end < end:
        tail = hourly_figures(
            pool_id=pool.pk, since=rolled_end, until=end, held_sessions=state.held_sessions, clock=now
        )
        number = 0
        for hour in tail:
            if hour.start < start:
                continue
            while number + 1 < len(starts) and starts[number + 1] <= hour.start:
                number += 1
            peaks[number] = max(peaks[number], hour.peak)
            if hour.start == start:
                held_at_start = hour.held_at_start
        begun += (
            EngineSession.objects.filter(pool=pool, started_at__gte=max(start, rolled_end), started_at__lt=end)
            .filter(Q(ended_at__gt=start) | Q(ended_at__isnull=True, lease_expires_at__gt=start))
            .count()
        )
    ends = [*starts[1:], end]
    buckets = [
        Bucket(bucket_start, bucket_end, peak)
        for bucket_start, bucket_end, peak in zip(starts, ends, peaks, strict=True)
    ]
    return PeriodUsage(buckets, held_at_start + begun)


@dataclass(frozen=True)
class UsageSummary:
    """The figures above the chart."""

    buckets: list
    quota: int
    granularity: Granularity
    # When the subscription ran: a bucket wholly outside it had nothing to use, so it says nothing
    # about use and stays out of the average and of the buckets the quota could be reached in.
    subscription_start: datetime | None = None
    subscription_end: datetime | None = None

    @property
    def subscribed_buckets(self):
        return [
            bucket
            for bucket in self.buckets
            if (self.subscription_start is None or bucket.end > self.subscription_start)
            and (self.subscription_end is None or bucket.start < self.subscription_end)
        ]

    @property
    def peak(self):
        return max((bucket.peak for bucket in self.buckets), default=0)

    @property
    def peak_bucket(self):
        """The first bucket where the peak was reached."""
        return next((bucket for bucket in self.buckets if bucket.peak == self.peak), None)

    @property
    def average_peak(self):
        """The average of the peaks while the subscription ran."""
        subscribed = self.subscribed_buckets
        if not subscribed:
            return 0
        return sum(bucket.peak for bucket in subscribed) / len(subscribed)

    @property
    def buckets_at_quota(self):
        return [bucket for bucket in self.buckets if self.at_quota(bucket)]

    def at_quota(self, bucket):
        return bucket.peak >= self.quota > 0 or (self.quota == 0 and bucket.peak > 0)


@dataclass(frozen=True)
class ChartBar:
    start: datetime
    x: float
    y: float
    width: float
    height: float
    label: str
    peak: int
    at_quota: bool


@dataclass(frozen=True)
class ChartTick:
    position: float
    label: str
    # Every other time label: hidden on narrow screens (static/css/responsive.css), where the
    # labels are drawn larger so they stay readable.
    minor: bool = False


class Chart:
    """Geometry of the SVG bar chart: one bar per bucket (its peak), the quota as a line."""

    width = 760
    height = 260
    left = 44
    right = 12
    top = 14
    bottom = 34

    def __init__(self, summary: UsageSummary):
        self.summary = summary
        # Headroom above the highest of quota and peak, so the quota line never sits on the frame.
        highest = max(summary.quota, summary.peak, 1)
        self.scale_max = highest + max(1, math.ceil(highest * 0.15))

    @property
    def plot_width(self):
        return self.width - self.left - self.right

    @property
    def plot_height(self):
        return self.height - self.top - self.bottom

    @property
    def baseline(self):
        return self.top + self.plot_height

    @property
    def plot_right(self):
        return self.left + self.plot_width

    def y_for(self, value):
        return round(self.baseline - value / self.scale_max * self.plot_height, 1)

    @property
    def quota_y(self):
        return self.y_for(self.summary.quota)

    @property
    def bars(self):
        buckets = self.summary.buckets
        if not buckets:
            return []
        slot = self.plot_width / len(buckets)
        gap = min(2.0, slot * 0.15)
        bars = []
        for index, bucket in enumerate(buckets):
            top = self.y_for(bucket.peak)
            bars.append(
                ChartBar(
                    start=bucket.start,
                    x=round(self.left + index * slot + gap / 2, 1),
                    y=top,
                    width=round(slot - gap, 1),
                    height=round(self.baseline - top, 1),
                    label=bucket.label(self.summary.granularity),
                    peak=bucket.peak,
                    at_quota=self.summary.at_quota(bucket),
                )
            )
        return bars

    @property
    def x_ticks(self):
        """About six labels along the time axis, at the middle of the bars they name."""
        buckets = self.summary.buckets
        if not buckets:
            return []
        slot = self.plot_width / len(buckets)
        every = max(1, math.ceil(len(buckets) / 6))
        return [
            ChartTick(
                round(self.left + (index + 0.5) * slot, 1),
                bucket.label(self.summary.granularity),
                minor=(index // every) % 2 == 1,
            )
            for index, bucket in enumerate(buckets)
            if index % every == 0
        ]

    @property
    def y_ticks(self):
        values = sorted({0, math.ceil(self.scale_max / 2), self.scale_max})
        return [ChartTick(self.y_for(value), str(value)) for value in values]


def history(*, pool, period, now, user_text="", machine_text="", reason=""):
    """The pool's sessions that held a license during `period`, newest first, annotated with when
    they stopped holding it (`held_until`, now for live ones) and their `status`: the end reason,
    "expired" for a lapsed lease not yet marked, or "live"."""
    clock = Value(now, output_field=DateTimeField())
    sessions = (
        EngineSession.objects.filter(pool=pool, started_at__lt=period.end)
        .filter(Q(ended_at__gt=period.start) | Q(ended_at__isnull=True, lease_expires_at__gt=period.start))
        .annotate(
            held_until=Coalesce(F("ended_at"), Least(F("lease_expires_at"), clock)),
            status=Case(
                When(ended_at__isnull=False, then=F("end_reason")),
                When(lease_expires_at__lte=clock, then=Value("expired")),
                default=Value(LIVE),
                output_field=CharField(),
            ),
        )
        .order_by("-started_at", "-id")
    )
    if user_text:
        sessions = sessions.filter(Q(user__email__icontains=user_text) | Q(user__name__icontains=user_text))
    if machine_text:
        sessions = sessions.filter(Q(machine__machine_id__icontains=machine_text) | Q(hostname__icontains=machine_text))
    if reason:
        sessions = sessions.filter(status=reason)
    return sessions


def format_duration(delta):
    seconds = max(0, int(delta.total_seconds()))
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s"
