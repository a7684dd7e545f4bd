"""Demand a pool did not meet at once, per bar of the usage page: activations refused because no
license was free, and how long engines waited in line for one. Frequent refusals or long waits are
what more licenses would buy back.

Both come from counters kept per pool and UTC hour as things happen (every bar is a whole number of
hours): QuotaRefusalHour counts refusals, QueueWaitHour counts granted waits by their length (to the
second below ten minutes, ten seconds below an hour, a minute beyond: wait_resolution). So the page
reads a few rows per hour however many engines waited, and still gives exact medians and 95th
percentiles at that resolution, nearest-rank: the p-th percentile of n waits is the
ceil(p/100 * n)-th shortest, a wait that really happened.
"""

import math
from dataclasses import dataclass
from datetime import timedelta

from django.db import connection
from django.db.models import Case, IntegerField, Sum, Value, When

from sessions_app.models import QueueWaitHour, QuotaRefusalHour

MEDIAN, P95 = 50, 95
OVERALL = -1  # the bar number standing for the whole period in the waits statement


@dataclass(frozen=True)
class Demand:
    """One bar's unmet demand (or the whole period's)."""

    refused: int = 0
    waits: int = 0
    median_wait: timedelta | None = None
    p95_wait: timedelta | None = None


def _bar_number(starts):
    """The number of the bar (of those starting at `starts`) an hour falls in."""
    return Case(
        *[When(hour__lt=start, then=Value(number)) for number, start in enumerate(starts[1:])],
        default=Value(len(starts) - 1),
        output_field=IntegerField(),
    )


# Per bar, and for the whole period (bar OVERALL), the wait lengths that hold the median and the
# 95th percentile: `upto` counts the waits up to and including a length, so the length whose range
# (upto - waits, upto] holds rank r is the r-th shortest. Integer division: (n * p + 99) / 100 is
# ceil(n * p / 100) once the sums are cast to integers (PostgreSQL sums bigints into numerics).
PERCENTILES_SQL = """
WITH per_length AS ({per_bar} UNION ALL {overall}),
ranked AS (
    SELECT n, wait_seconds, waits,
           CAST(SUM(waits) OVER (PARTITION BY n ORDER BY wait_seconds) AS BIGINT) AS upto,
           CAST(SUM(waits) OVER (PARTITION BY n) AS BIGINT) AS total
    FROM per_length
)
SELECT n, wait_seconds, upto - waits, upto, total FROM ranked
WHERE (total * {median} + 99) / 100 BETWEEN upto - waits + 1 AND upto
   OR (total * {p95} + 99) / 100 BETWEEN upto - waits + 1 AND upto
"""


def demand_by_bar(*, pool, period) -> tuple[list[Demand], Demand]:
    """Refusals and waits in each bar of `period`, in bar order, and over the whole period: two
    statements over the hourly counters, whatever the volume."""
    starts = period.bucket_starts()
    if not starts:
        return [], Demand()
    in_period = {"pool": pool, "hour__gte": period.start, "hour__lt": period.end}
    refused = dict(
        QuotaRefusalHour.objects.filter(**in_period)
        .annotate(n=_bar_number(starts))
        .values("n")
        .annotate(refused=Sum("refusals"))
        .order_by()
        .values_list("n", "refused")
    )
    waits = QueueWaitHour.objects.filter(**in_period)
    per_bar, per_bar_params = (
        waits.annotate(n=_bar_number(starts))
        .values("n", "wait_seconds")
        .annotate(waits=Sum("waits"))
        .order_by()
        .query.sql_with_params()
    )
    overall, overall_params = (
        waits.annotate(n=Value(OVERALL, output_field=IntegerField()))
        .values("n", "wait_seconds")
        .annotate(waits=Sum("waits"))
        .order_by()
        .query.sql_with_params()
    )
    figures = {}
    with connection.cursor() as cursor:
        cursor.execute(
            PERCENTILES_SQL.format(per_bar=per_bar, overall=overall, median=MEDIAN, p95=P95),
            [*per_bar_params, *overall_params],
        )
        for number, wait_seconds, before, upto, total in cursor.fetchall():
            bar = figures.setdefault(number, {"waits": int(total)})
            for name, percentile in (("median_wait", MEDIAN), ("p95_wait", P95)):
                if before < _nearest_rank(percentile, total) <= upto:
                    bar[name] = timedelta(seconds=wait_seconds)
    bars = [Demand(refused=refused.get(number, 0), **figures.get(number, {})) for number in range(len(starts))]
    return bars, Demand(refused=sum(refused.values()), **figures.get(OVERALL, {}))


def _nearest_rank(percentile, count):
    return math.ceil(percentile * int(count) / 100)
