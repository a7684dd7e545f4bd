"""Demand a pool did not meet at once, per bar of the usage page: activations refused because no
license was free, and how long engines waited in line for one. Frequent refusals or long waits are
what more licenses would buy back.

Two indexed queries whatever the volume: refusals are counted per pool and hour as they happen
(QuotaRefusalHour; every bar is a whole number of hours), and waits are the granted queue tickets
of the period (index ticket_granted_by_pool), ranked per bar in the database so that only each
bar's median and 95th percentile come back. Percentiles are nearest-rank: the p-th percentile of n
waits is the ceil(p/100 * n)-th shortest, a wait that really happened.
"""

import math
from dataclasses import dataclass
from datetime import timedelta

from django.db import connection
from django.db.models import Case, Count, DurationField, ExpressionWrapper, F, IntegerField, Sum, Value, When, Window
from django.db.models.functions import RowNumber

from sessions_app.models import QueueTicket, QuotaRefusalHour, TicketOutcome

MEDIAN, P95 = 50, 95


@dataclass(frozen=True)
class Demand:
    """One bar's unmet demand."""

    refused: int = 0
    waits: int = 0
    median_wait: timedelta | None = None
    p95_wait: timedelta | None = None


def _bar_number(field, starts):
    """The number of the bar (of those starting at `starts`) that `field` falls in."""
    return Case(
        *[When(**{f"{field}__lt": start}, then=Value(number)) for number, start in enumerate(starts[1:])],
        default=Value(len(starts) - 1),
        output_field=IntegerField(),
    )


def _as_duration(value):
    # The outer query below is raw SQL, so no converter runs: PostgreSQL gives an interval, SQLite
    # the microseconds Django's duration arithmetic computes there.
    return value if isinstance(value, timedelta) else timedelta(microseconds=int(value))


def demand_by_bar(*, pool, period) -> tuple[list[Demand], Demand]:
    """Refusals and waits in each bar of `period`, in bar order, and over the whole period."""
    starts = period.bucket_starts()
    if not starts:
        return [], Demand()
    refused = dict(
        QuotaRefusalHour.objects.filter(pool=pool, hour__gte=period.start, hour__lt=period.end)
        .annotate(n=_bar_number("hour", starts))
        .values("n")
        .annotate(refused=Sum("refusals"))
        .order_by()
        .values_list("n", "refused")
    )
    ranked = (
        QueueTicket.objects.filter(
            pool=pool, outcome=TicketOutcome.GRANTED, ended_at__gte=period.start, ended_at__lt=period.end
        )
        .annotate(
            n=_bar_number("ended_at", starts),
            wait=ExpressionWrapper(F("ended_at") - F("joined_at"), output_field=DurationField()),
        )
        .annotate(
            rank=Window(RowNumber(), partition_by=[F("n")], order_by=[F("wait").asc(), F("id").asc()]),
            waits=Window(Count("id"), partition_by=[F("n")]),
            overall_rank=Window(RowNumber(), order_by=[F("wait").asc(), F("id").asc()]),
            overall_waits=Window(Count("id")),
        )
        .values("n", "wait", "rank", "waits", "overall_rank", "overall_waits")
        .order_by()
    )
    inner, params = ranked.query.sql_with_params()
    # Only the ranks a percentile needs leave the database (a filter on window results joined by OR
    # is not something the ORM expresses). Integer division: (c * p + 99) / 100 is ceil(c * p / 100).
    n, wait, rank, waits, overall_rank, overall_waits = map(
        connection.ops.quote_name, ("n", "wait", "rank", "waits", "overall_rank", "overall_waits")
    )
    sql = (
        f"SELECT {n}, {wait}, {rank}, {waits}, {overall_rank}, {overall_waits} FROM ({inner}) ranked "  # noqa: S608 (SQL from the ORM above)
        f"WHERE {rank} IN (({waits} * {MEDIAN} + 99) / 100, ({waits} * {P95} + 99) / 100) "
        f"OR {overall_rank} IN (({overall_waits} * {MEDIAN} + 99) / 100, ({overall_waits} * {P95} + 99) / 100)"
    )
    by_bar, overall = {}, {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for number, duration, bar_rank, bar_waits, all_rank, all_waits in cursor.fetchall():
            _place(by_bar.setdefault(number, {"waits": bar_waits}), bar_rank, bar_waits, duration)
            _place(overall.setdefault("all", {"waits": all_waits}), all_rank, all_waits, duration)
    bars = [Demand(refused=refused.get(number, 0), **by_bar.get(number, {})) for number in range(len(starts))]
    return bars, Demand(refused=sum(refused.values()), **overall.get("all", {}))


def _place(figures, rank, count, duration):
    if rank == _nearest_rank(MEDIAN, count):
        figures["median_wait"] = _as_duration(duration)
    if rank == _nearest_rank(P95, count):
        figures["p95_wait"] = _as_duration(duration)


def _nearest_rank(percentile, count):
    return math.ceil(percentile * count / 100)
