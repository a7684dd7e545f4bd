"""The line an RE activation waits in when no license is free (contract: "Waiting for a license").

actions.activate calls these with its pool's row locked, so everything about the line is decided by
one transaction at a time, and by the database's clock as read after the lock was taken (`now` of
`count_pool`; a lock statement's own clock can be older by however long it waited for the lock):

- A ticket is *waiting* while it is open, was polled before its `poll_before` and has not passed
  its `expires_at`. Nothing has to happen for a ticket to stop waiting: one whose engine stopped
  polling leaves the line the moment its `poll_before` passes, and from then on counts for nobody.
  expire_sessions only marks such tickets ended afterwards, for the pages.
- The line is first come, first served by ticket id: tickets are created under the pool's lock, so
  ids follow the order in which engines asked. A ticket's position is 1 + the waiting tickets
  ahead of it.
- *free* is the quota less live sessions and unexpired offline licenses. The licenses free are set
  aside for the oldest waiting tickets: the ticket at position p takes one at its poll when p <= free,
  and a request without a ticket takes one only when free > waiting, a license no waiting ticket
  can take. So with k licenses free the k oldest tickets are granted at their next poll, and no
  younger ticket or newcomer takes a license meant for an older one.
"""

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.db.models.functions import Now
from django.utils.dateparse import parse_datetime

from licenses import errors
from licenses.models import LicensePool, OfflineLicense, Product
from organizations.audit import Action, record

from .models import EngineSession, QueueTicket, QueueWaitHour, QuotaRefusalHour, TicketOutcome, wait_resolution

DEFAULT_MAX_WAIT_SECONDS = 1800
MAX_WAIT_SECONDS = 86_400
# The contract: poll_before is the answer's time + retry_after_seconds + this.
POLL_GRACE_SECONDS = 30

# How often a waiting engine polls (retry_after_seconds). Only the head of the line can be granted
# soon, so it polls often, and every group of tickets further back polls a little less often:
#     retry_after_seconds = min(30, 2 + 2 * ((position - 1) // group)),  group = quota clamped to 1..10
# With quota 10: positions 1-10 poll every 2 s, 11-20 every 4 s, 21-30 every 6 s, ... up to 30 s.
# A license that frees up is taken within about 2 s when the line is short, and however long the
# line, its polls cost at most about 17 requests a second (10/2 + 10/4 + ... + 10/30 for the first
# 150 tickets) plus one per 30 s per ticket behind them. The answer never asks for a poll later than
# the ticket's expiry, so a wait that runs out is told so then.
POLL_FIRST_SECONDS = 2
POLL_STEP_SECONDS = 2
POLL_LONGEST_SECONDS = 30
POLL_GROUP_LARGEST = 10


def retry_after_seconds(*, position: int, quota: int, seconds_left: float) -> int:
    group = max(1, min(quota, POLL_GROUP_LARGEST))
    seconds = min(POLL_LONGEST_SECONDS, POLL_FIRST_SECONDS + POLL_STEP_SECONDS * ((position - 1) // group))
    return max(1, min(seconds, math.ceil(seconds_left)))


@dataclass(frozen=True)
class PoolCounts:
    """An RE pool's figures under its lock, with the clock they were read at."""

    now: datetime
    quota: int
    live: int
    offline: int
    waiting: int

    @property
    def free(self):
        # Negative when a quota was lowered below what is in use: nobody is granted until it is back.
        return self.quota - self.live - self.offline

    @property
    def admits_newcomer(self):
        """Whether a request without a ticket may take a license: one no waiting ticket can take."""
        return self.free > self.waiting


# Live sessions, unexpired offline licenses and waiting tickets of one pool, with the clock they
# were read at, in one statement: the activation's hot path, so the line costs no query of its own
# (the partial index ticket_open_by_pool holds only open tickets: an empty line reads nothing). Raw
# SQL because this is the busiest statement of the API: the ORM spelling (three correlated
# subqueries on LicensePool) costs several times more to build than to run, on every activation.
# Each condition is the one of EngineSession.objects.live(), OfflineLicense.objects.unexpired()
# and QueueTicket.objects.waiting(); test_queue.py proves the figures the same.
COUNT_POOL_SQL = """
SELECT {now},
    (SELECT COUNT(*) FROM {sessions} WHERE pool_id = %s AND ended_at IS NULL AND lease_expires_at > {now}),
    (SELECT COUNT(*) FROM {offline} WHERE pool_id = %s AND expires_at > {now}),
    (SELECT COUNT(*) FROM {tickets}
     WHERE pool_id = %s AND ended_at IS NULL AND poll_before > {now} AND expires_at > {now})
"""


@functools.cache
def _count_pool_sql(vendor):
    query = QueueTicket.objects.all().query
    now, _ = query.get_compiler(connection=connection).compile(Now().resolve_expression(query))
    quote = connection.ops.quote_name
    return COUNT_POOL_SQL.format(
        now=now,
        sessions=quote(EngineSession._meta.db_table),
        offline=quote(OfflineLicense._meta.db_table),
        tickets=quote(QueueTicket._meta.db_table),
    )


def count_pool(pool: LicensePool) -> PoolCounts:
    """The pool's figures under its lock: live sessions, unexpired offline licenses and waiting
    tickets, read at the database's clock after the lock was taken."""
    with connection.cursor() as cursor:
        cursor.execute(_count_pool_sql(connection.vendor), [pool.pk] * 3)
        now, live, offline, waiting = cursor.fetchone()
    if isinstance(now, str):  # SQLite hands the clock back as text, in UTC
        now = parse_datetime(now).replace(tzinfo=UTC)
    return PoolCounts(now=now, quota=pool.quota, live=live, offline=offline, waiting=waiting)


def _figures(pool: LicensePool, counts: PoolCounts) -> dict:
    """The pool's figures as a session-quota refusal's details give them."""
    return {
        "quota": pool.quota,
        "live_sessions": counts.live,
        "offline_licenses": counts.offline,
        "waiting": counts.waiting,
    }


def _in_use(pool: LicensePool, counts: PoolCounts) -> str:
    offline_note = f" ({counts.live} online sessions and {counts.offline} offline licenses)" if counts.offline else ""
    return (
        f"{counts.live + counts.offline} of {pool.quota} {Product(pool.product).label} licenses are in use "
        f"in {pool.organization.name}{offline_note}"
    )


def quota_refusal(pool: LicensePool, counts: PoolCounts, message: str, **details) -> errors.SessionQuotaExceeded:
    refusal = errors.SessionQuotaExceeded(message, details={**_figures(pool, counts), **details})
    # For the usage page's refusals per hour (count_refusal), after the activation rolled back.
    refusal.pool_id = pool.pk
    refusal.refused_at = counts.now
    return refusal


def may_take_license(counts: PoolCounts, ticket=None) -> bool:
    """Whether a request may take a license now: a polled ticket when its position is within the
    licenses free (one is set aside for it), a request without one when more licenses are free than
    tickets wait."""
    if ticket is None:
        return counts.admits_newcomer
    return ticket.position <= counts.free


def newcomer_refusal(pool: LicensePool, counts: PoolCounts) -> errors.SessionQuotaExceeded:
    message = f"License quota exceeded: {_in_use(pool, counts)}."
    if counts.waiting:
        message += f" {counts.waiting} {'engine is' if counts.waiting == 1 else 'engines are'} waiting in line"
        if counts.free > 0:
            free = "license is" if counts.free == 1 else "licenses are"
            message += f", and the {counts.free} free {free} set aside for them"
        message += "; ask with queue (katalon-license run --wait) to wait your turn."
    else:
        message += " Release a session or ask an admin for more licenses."
    return quota_refusal(pool, counts, message)


@dataclass(frozen=True)
class Queued:
    """A 202: the request waits in line."""

    ticket: QueueTicket
    position: int
    waiting: int
    retry_after_seconds: int


def ticket_for_poll(pool: LicensePool, *, user, machine_id: str, ticket_id: str, now: datetime) -> QueueTicket:
    """The open ticket this poll names, with its `position`. It must belong to this user, pool (so
    organization and product) and machine id, and have been polled in time; anything else is one
    answer, 404, so tickets cannot be probed."""
    ticket = (
        QueueTicket.objects.filter(
            public_id=ticket_id, pool=pool, user=user, machine_id=machine_id, ended_at__isnull=True, poll_before__gt=now
        )
        .with_position(now)
        .first()
    )
    if ticket is None:
        raise errors.TicketNotFound(
            f"Ticket {ticket_id} is not waiting in the line of {pool.organization.name}'s "
            f"{Product(pool.product).label} licenses: it was used, removed by an admin, not polled before its "
            "poll_before, or it belongs to another request. Activate afresh.",
            details={"ticket": ticket_id},
        )
    return ticket


def wait_over(pool: LicensePool, ticket: QueueTicket, counts: PoolCounts) -> errors.SessionQuotaExceeded:
    """The refusal for a poll after the ticket's expires_at. The ticket ends with it (note_refusal),
    so later polls answer 404."""
    waited = max(0, int((counts.now - ticket.joined_at).total_seconds()))
    refusal = quota_refusal(
        pool,
        counts,
        f"No license became free within the wait asked for ({waited} s): {_in_use(pool, counts)}, and "
        f"{counts.waiting} engines wait in line. Activate again to wait longer, or ask an admin for more licenses.",
        waited_seconds=waited,
    )
    refusal.ends_ticket = ticket.pk
    return refusal


def join(
    pool: LicensePool,
    counts: PoolCounts,
    *,
    user,
    machine_id: str,
    hostname: str,
    max_wait_seconds: int,
    ip_address: str | None,
) -> Queued:
    """A new ticket at the end of the line. Joining is audited like a refusal (the quota was reached,
    and owners are alerted of it the same way); the polls that follow are not."""
    position = counts.waiting + 1
    retry = retry_after_seconds(position=position, quota=pool.quota, seconds_left=max_wait_seconds)
    ticket = QueueTicket.objects.create(
        pool=pool,
        user=user,
        machine_id=machine_id,
        hostname=hostname,
        joined_at=counts.now,
        last_polled_at=counts.now,
        poll_before=counts.now + timedelta(seconds=retry + POLL_GRACE_SECONDS),
        expires_at=counts.now + timedelta(seconds=max_wait_seconds),
    )
    record(
        organization=pool.organization,
        actor=user,
        action=Action.ACTIVATION_QUEUED,
        target=pool,
        target_label=f"{pool.product} on {machine_id}",
        after={
            "code": errors.SessionQuotaExceeded.code,
            "message": f"No license free: {_in_use(pool, counts)}. Waiting in line at position {position}.",
            "details": _figures(pool, counts),
            "product": pool.product,
            "machine_id": machine_id,
            "queued": True,
            "ticket": ticket.public_id,
        },
        ip_address=ip_address,
    )
    return Queued(ticket=ticket, position=position, waiting=position, retry_after_seconds=retry)


def keep_waiting(pool: LicensePool, counts: PoolCounts, ticket: QueueTicket, *, hostname: str) -> Queued:
    """A poll that is not yet granted: the ticket's figures and its next deadline."""
    position = ticket.position
    retry = retry_after_seconds(
        position=position, quota=pool.quota, seconds_left=(ticket.expires_at - counts.now).total_seconds()
    )
    ticket.poll_before = counts.now + timedelta(seconds=retry + POLL_GRACE_SECONDS)
    ticket.last_polled_at = counts.now
    ticket.hostname = hostname or ticket.hostname
    QueueTicket.objects.filter(pk=ticket.pk).update(
        poll_before=ticket.poll_before, last_polled_at=ticket.last_polled_at, hostname=ticket.hostname
    )
    return Queued(ticket=ticket, position=position, waiting=counts.waiting, retry_after_seconds=retry)


def granted(ticket: QueueTicket, session: EngineSession, now: datetime) -> None:
    """The ticket is used up by the session it was granted, and its wait counts in the hour's
    QueueWaitHour for the usage page."""
    QueueTicket.objects.filter(pk=ticket.pk).update(
        ended_at=now, outcome=TicketOutcome.GRANTED, session=session, last_polled_at=now
    )
    count_wait(ticket.pool_id, granted_at=now, waited=now - ticket.joined_at)


def count_wait(pool_id: int, *, granted_at: datetime, waited: timedelta) -> None:
    """One more engine of the pool got a license at `granted_at` after waiting `waited`."""
    _add_one(
        QueueWaitHour,
        "waits",
        pool_id=pool_id,
        hour=_hour_of(granted_at),
        wait_seconds=wait_resolution(waited.total_seconds()),
    )


def _hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _add_one(model, counter: str, **key) -> None:
    """Add one to `model`'s `counter` in the row of `key` (made if missing), in one upsert: engines
    counted at once add up exactly, each waiting only for the row's brief lock."""
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    columns = [quote(model._meta.get_field(name.removesuffix("_id")).column) for name in key]
    values = [connection.ops.adapt_datetimefield_value(v) if isinstance(v, datetime) else v for v in key.values()]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}, {quote(counter)}) "  # noqa: S608  # nosec B608  # names from the model, values as parameters
            f"VALUES ({', '.join(['%s'] * len(values))}, 1) "
            f"ON CONFLICT ({', '.join(columns)}) DO UPDATE SET {quote(counter)} = {table}.{quote(counter)} + 1",
            values,
        )


def note_refusal(refusal: errors.LicenseRefusal) -> None:
    """What a refusal leaves behind once the activation has rolled back, in the transaction that
    records it: a wait that ran out ends its ticket, and a refusal for the session quota counts in
    its pool's hour (QuotaRefusalHour) for the usage page."""
    ticket_pk = getattr(refusal, "ends_ticket", None)
    if ticket_pk is not None:
        # No pool lock needed: an expired ticket can never be granted, so nothing races this end.
        QueueTicket.objects.filter(pk=ticket_pk, ended_at__isnull=True).update(
            ended_at=refusal.refused_at, outcome=TicketOutcome.EXPIRED, last_polled_at=refusal.refused_at
        )
    pool_id = getattr(refusal, "pool_id", None)
    if pool_id is not None:
        _add_one(QuotaRefusalHour, "refusals", pool_id=pool_id, hour=_hour_of(refusal.refused_at))
