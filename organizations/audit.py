"""Writing the audit log. Actions call `record` inside their own transaction, so a change that
rolls back leaves no event and an event never describes a change that did not happen."""

import ipaddress

from django.db import transaction
from django.dispatch import Signal

from .models import AuditEvent

# Sent inside the transaction of the change, right after its audit events are written, with
# `events`: the saved AuditEvents, each carrying the object the action named as `target_object`
# (not stored). Apps above this one (notifications) act on a change here without this app importing
# them, and whatever they write commits or rolls back together with the change.
recorded = Signal()


class Action:
    """The audit vocabulary. Pages filter by these values; renaming one orphans old events."""

    ORGANIZATION_CREATED = "organization.created"
    MEMBER_INVITED = "member.invited"
    INVITATION_RESENT = "invitation.resent"
    INVITATION_REVOKED = "invitation.revoked"
    INVITATION_ACCEPTED = "invitation.accepted"
    MEMBER_ROLE_CHANGED = "member.role_changed"
    MEMBER_REMOVED = "member.removed"
    OWNERSHIP_TRANSFERRED = "ownership.transferred"
    POOL_PROVISIONED = "pool.provisioned"
    LICENSE_GRANTED = "license.granted"
    LICENSE_REVOKED = "license.revoked"
    SESSION_ENDED = "session.ended"
    MACHINE_DEACTIVATED = "machine.deactivated"
    QUEUE_TICKET_REMOVED = "queue_ticket.removed"
    OFFLINE_LICENSE_CREATED = "offline_license.created"
    API_KEY_CREATED = "api_key.created"
    API_KEY_REVOKED = "api_key.revoked"
    ACTIVATION_REFUSED = "activation.refused"
    ACTIVATION_QUEUED = "activation.queued"
    LICENSE_GRANT_REFUSED = "license.grant_refused"
    WEBHOOK_CREATED = "webhook.created"
    WEBHOOK_CHANGED = "webhook.changed"
    WEBHOOK_SECRET_ROLLED = "webhook.secret_rolled"
    WEBHOOK_DELETED = "webhook.deleted"
    SIGN_IN_LOCKED_OUT = "sign_in.locked_out"

    LABELS = {
        ORGANIZATION_CREATED: "Created the organization",
        MEMBER_INVITED: "Invited",
        INVITATION_RESENT: "Resent an invitation",
        INVITATION_REVOKED: "Revoked an invitation",
        INVITATION_ACCEPTED: "Accepted an invitation",
        MEMBER_ROLE_CHANGED: "Changed a role",
        MEMBER_REMOVED: "Removed a member",
        OWNERSHIP_TRANSFERRED: "Transferred ownership",
        POOL_PROVISIONED: "Provisioned a license pool",
        LICENSE_GRANTED: "Granted a license",
        LICENSE_REVOKED: "Withdrew a license",
        SESSION_ENDED: "Ended a session",
        MACHINE_DEACTIVATED: "Deactivated a machine",
        QUEUE_TICKET_REMOVED: "Removed an engine from the line",
        OFFLINE_LICENSE_CREATED: "Created an offline license",
        API_KEY_CREATED: "Created an API key",
        API_KEY_REVOKED: "Revoked an API key",
        ACTIVATION_REFUSED: "Activation refused",
        ACTIVATION_QUEUED: "Activation waiting in line",
        LICENSE_GRANT_REFUSED: "License grant refused",
        WEBHOOK_CREATED: "Added a webhook endpoint",
        WEBHOOK_CHANGED: "Changed a webhook endpoint",
        WEBHOOK_SECRET_ROLLED: "Rolled a webhook signing secret",
        WEBHOOK_DELETED: "Deleted a webhook endpoint",
        SIGN_IN_LOCKED_OUT: "Sign-in locked out after failed attempts",
    }

    @classmethod
    def choices(cls):
        return list(cls.LABELS.items())


def record(*, organization, actor, action, target=None, target_label="", before=None, after=None, ip_address=None):
    """Write one audit event. Must run inside the transaction of the change it records."""
    _require_transaction()
    event = _event(organization, actor, action, target, target_label, before, after, ip_address)
    event.save()
    recorded.send(sender=AuditEvent, events=[event])
    return event


def record_each(targets, *, organization, actor, action, describe, ip_address=None):
    """One event per target (several people granted or invited at once), in one INSERT.
    `describe(target)` gives the event's own fields: target_label, and before/after if any."""
    _require_transaction()
    events = AuditEvent.objects.bulk_create(
        [_event(organization, actor, action, target, ip_address=ip_address, **describe(target)) for target in targets]
    )
    recorded.send(sender=AuditEvent, events=events)
    return events


def _require_transaction():
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("Audit events are written inside the transaction of the change they record.")


def _event(organization, actor, action, target, target_label="", before=None, after=None, ip_address=None):
    known_actor = actor is not None and actor.pk is not None
    event = AuditEvent(
        organization=organization,
        actor=actor if known_actor else None,
        actor_label=actor.email if known_actor else "",
        action=action,
        target_type=target._meta.model_name if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_label=target_label or (str(target) if target is not None else ""),
        before=before,
        after=after,
        ip_address=ip_address,
    )
    event.target_object = target
    return event


def client_ip(request):
    """The address the request came from, for the audit log and per-address rate limits.

    Behind a reverse proxy every request arrives from the proxy, so the client is the address the
    proxy appended last to X-Forwarded-For. That header is believed only from a proxy on this host
    or a private network: a client connecting directly could write anything into it."""
    peer = request.META.get("REMOTE_ADDR") or None
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if peer is None or not forwarded or not _is_internal(peer):
        return peer
    nearest = forwarded.rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(nearest))
    except ValueError:
        return peer


def _is_internal(address):
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return parsed.is_loopback or parsed.is_private
