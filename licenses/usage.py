"""How much of a pool was used, and when: the peak of concurrent sessions per time bucket, computed
in the database, and the session history behind it."""

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db import connection
from django.db.models import Case, CharField, DateTimeField, F, Q, Value, When
from django.db.models.functions import Coalesce, Least

from sessions_app.models import EngineSession

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


@dataclass(frozen=True)
class UsageSummary:
    """The figures above the chart."""

    buckets: list
    quota: int
    granularity: Granularity

    @property
    def peak(self):
        return max((bucket.peak for bucket in self.buckets), default=0)

    @property
    def peak_bucket(self):
        """The first bucket where the peak was reached."""
        return next((bucket for bucket in self.buckets if bucket.peak == self.peak), None)

    @property
    def average_peak(self):
        if not self.buckets:
            return 0
        return sum(bucket.peak for bucket in self.buckets) / len(self.buckets)

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
            ChartTick(round(self.left + (index + 0.5) * slot, 1), bucket.label(self.summary.granularity))
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
