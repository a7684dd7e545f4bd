"""Recording events. Every change below this app writes its audit events through
organizations.audit, which sends `recorded` inside the change's transaction; `on_audit_recorded`
turns the audit events that matter into notification events right there, so an event commits or
rolls back with its cause and no lower app knows this one exists. Time-based events come from the
periodic job (notifications.periodic) through the same `record_events`."""

import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from licenses.errors import MachineQuotaExceeded, SeatQuotaExceeded, SessionQuotaExceeded
from licenses.models import LicensePool
from organizations.audit import Action
from sessions_app.actions import iso
from sessions_app.models import EndReason

from . import tasks
from .event_types import EventType
from .models import Event

logger = logging.getLogger(__name__)

# Which refusals mean "the quota is used up", and which limit each one hit.
QUOTA_REFUSALS = {
    SessionQuotaExceeded.code: "sessions",
    MachineQuotaExceeded.code: "machines",
    SeatQuotaExceeded.code: "licensed_users",
}


@dataclass(frozen=True)
class NewEvent:
    organization_id: int
    type: str
    data: dict
    # Events of one cause share a key; the database keeps one of them (Event.one_event_per_cause).
    dedupe_key: str | None = None


def record_events(new_events):
    """Write the events in the current transaction and have the worker fan them out once it commits.
    Events whose dedupe key is taken already are dropped. Returns the events written."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("Events are written inside the transaction of the change that causes them.")
    now = timezone.now()
    keys = {(new.type, new.dedupe_key) for new in new_events if new.dedupe_key is not None}
    taken = set()
    if keys:
        taken = set(
            Event.objects.filter(
                type__in={event_type for event_type, _ in keys}, dedupe_key__in={key for _, key in keys}
            ).values_list("type", "dedupe_key")
        )
    written = []
    for new in new_events:
        event = Event(
            organization_id=new.organization_id,
            type=new.type,
            data=new.data,
            dedupe_key=new.dedupe_key,
            created_at=now,
            enqueued_at=now,
        )
        if new.dedupe_key is None:
            written.append(event)
            continue
        if (new.type, new.dedupe_key) in taken:
            continue
        try:
            # A savepoint: another host may insert the same cause between the check and here, and
            # the transaction of the change must survive losing that race.
            with transaction.atomic():
                event.save()
        except IntegrityError:
            continue
        written.append(event)
    Event.objects.bulk_create([event for event in written if event.pk is None])
    if written:
        ids = [event.pk for event in written]
        # robust: the change has committed, and a queue that cannot be written to must not turn
        # it into an error; housekeeping enqueues whatever was left behind.
        transaction.on_commit(lambda: tasks.enqueue_fan_out(ids), robust=True)
    return written


def on_audit_recorded(sender, events, **kwargs):
    new_events = []
    for audit in events:
        describe = AUDITED.get(audit.action)
        if describe is None or audit.organization_id is None:
            continue
        new = describe(audit)
        if new is not None:
            new_events.append(new)
    if new_events:
        record_events(new_events)


def person(user):
    return {"email": user.email, "name": user.name} if user is not None else None


def pool_data(pool):
    return {
        "product": pool.product,
        "quota": pool.quota,
        "machine_quota": pool.machine_quota,
        "starts_at": iso(pool.starts_at),
        "expires_at": iso(pool.expires_at),
    }


def _new(audit, event_type, data, dedupe_key=None):
    return NewEvent(audit.organization_id, event_type, {**data, "actor": audit.actor_label or None}, dedupe_key)


def _quota_reached(audit):
    """At most one per pool per hour (UTC): a busy CI farm is refused hundreds of times an hour,
    and one word that the quota is used up is what owners need."""
    after = audit.after or {}
    limit = QUOTA_REFUSALS.get(after.get("code"))
    if limit is None:
        return None
    pool = audit.target_object if isinstance(audit.target_object, LicensePool) else None
    product = pool.product if pool is not None else after.get("product")
    dedupe_key = f"org {audit.organization_id} {product} {audit.created_at:%Y-%m-%dT%H}"
    # Most refusals of a busy hour stop here, at one indexed look-up.
    if Event.objects.filter(type=EventType.QUOTA_REACHED, dedupe_key=dedupe_key).exists():
        return None
    if pool is None:
        pool = LicensePool.objects.filter(organization_id=audit.organization_id, product=product).first()
        if pool is None:
            return None
    refused = {"user": audit.actor_label or None}
    if after.get("machine_id"):
        refused["machine_id"] = after["machine_id"]
    return _new(
        audit,
        EventType.QUOTA_REACHED,
        {
            "pool": pool_data(pool),
            "limit": limit,
            "message": after.get("message", ""),
            "figures": after.get("details", {}),
            "refused": refused,
            # The engine was not refused but put in the pool's line (sessions_app/queue.py).
            "queued": bool(after.get("queued")),
        },
        dedupe_key,
    )


def _seat(event_type):
    def describe(audit):
        seat = audit.target_object
        return _new(audit, event_type, {"product": seat.pool.product, "user": person(seat.user)})

    return describe


def _session_withdrawn(audit):
    if (audit.after or {}).get("reason") != EndReason.WITHDRAWN:
        return None  # a person ending their own session is a release, not a withdrawal
    session = audit.target_object
    return _new(
        audit,
        EventType.SESSION_WITHDRAWN,
        {
            "session": {
                "id": session.public_id,
                "product": session.pool.product,
                "machine_id": session.machine.machine_id,
                "hostname": session.hostname,
                "user": person(session.user),
                "started_at": iso(session.started_at),
            }
        },
    )


def _machine_deactivated(audit):
    machine = audit.target_object
    return _new(
        audit,
        EventType.MACHINE_DEACTIVATED,
        {
            "machine": {
                "machine_id": machine.machine_id,
                "hostname": machine.hostname,
                "product": machine.pool.product,
            },
            "sessions_ended": (audit.after or {}).get("sessions_ended", 0),
        },
    )


def _member_joined(audit):
    membership = audit.target_object
    return _new(audit, EventType.MEMBER_JOINED, {"user": person(membership.user), "role": membership.role})


def _member_removed(audit):
    membership = audit.target_object
    after = audit.after or {}
    return _new(
        audit,
        EventType.MEMBER_REMOVED,
        {
            "user": person(membership.user),
            "role": (audit.before or {}).get("role", membership.role),
            # What ended with the membership; no separate seat.revoked or session events are sent.
            "kse_seats_revoked": after.get("kse_seats_revoked", 0),
            "sessions_ended": after.get("sessions_ended", 0),
            "machines_deactivated": after.get("machines_deactivated", 0),
            "api_keys_revoked": after.get("api_keys_revoked", 0),
        },
    )


def _api_key(event_type):
    def describe(audit):
        api_key = audit.target_object
        return _new(
            audit,
            event_type,
            {
                "api_key": {
                    "name": api_key.name,
                    "prefix": api_key.prefix,
                    "user": person(api_key.user),
                    "only_this_organization": api_key.organization_id is not None,
                    "expires_at": iso(api_key.expires_at),
                }
            },
        )

    return describe


AUDITED = {
    Action.ACTIVATION_REFUSED: _quota_reached,
    Action.ACTIVATION_QUEUED: _quota_reached,
    Action.LICENSE_GRANT_REFUSED: _quota_reached,
    Action.LICENSE_GRANTED: _seat(EventType.SEAT_GRANTED),
    Action.LICENSE_REVOKED: _seat(EventType.SEAT_REVOKED),
    Action.SESSION_ENDED: _session_withdrawn,
    Action.MACHINE_DEACTIVATED: _machine_deactivated,
    Action.INVITATION_ACCEPTED: _member_joined,
    Action.MEMBER_REMOVED: _member_removed,
    Action.API_KEY_CREATED: _api_key(EventType.API_KEY_CREATED),
    Action.API_KEY_REVOKED: _api_key(EventType.API_KEY_REVOKED),
}
