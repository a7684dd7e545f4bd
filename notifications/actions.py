"""What owners and admins change on the Notifications page. Each action is one transaction, checks
the actor's role in the organization itself (every caller is held to it, not only the pages), and
audits changes to endpoints: an endpoint decides where the organization's events go."""

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from organizations.audit import Action, record
from organizations.models import MANAGER_ROLES, Membership, Organization

from . import destinations, signing
from .event_types import EventType
from .events import NewEvent, record_events
from .models import AlertPreference, Endpoint, Status, WebhookDelivery
from .tasks import enqueue_deliveries


class NotAllowed(PermissionDenied):
    pass


class Busy(Exception):
    """The delivery is being attempted right now; another attempt would be a duplicate."""


def _require_manager(organization, actor):
    if not Membership.objects.active().filter(organization=organization, user=actor, role__in=MANAGER_ROLES).exists():
        raise NotAllowed("Only owners and admins manage notifications.")


@transaction.atomic
def save_alert_preference(*, organization: Organization, user, event_types, daily_digest: bool) -> AlertPreference:
    _require_manager(organization, user)
    preference, _ = AlertPreference.objects.update_or_create(
        organization=organization,
        user=user,
        defaults={"event_types": [t for t in EventType.SUBSCRIBABLE if t in event_types], "daily_digest": daily_digest},
    )
    return preference


def _describe(endpoint):
    return {"url": endpoint.url, "description": endpoint.description, "event_types": endpoint.event_types or "all"}


def _audit(endpoint, action, *, actor, ip_address, before=None, after=None):
    record(
        organization=endpoint.organization,
        actor=actor,
        action=action,
        target=endpoint,
        target_label=endpoint.url,
        before=before,
        after=after,
        ip_address=ip_address,
    )


@transaction.atomic
def create_endpoint(
    *, organization: Organization, actor, url: str, description: str = "", event_types=(), ip_address=None
) -> tuple[Endpoint, str]:
    """A new endpoint; returns it and its signing secret, which is shown this once."""
    _require_manager(organization, actor)
    destinations.checked_addresses(url)
    secret = signing.generate_secret()
    endpoint = Endpoint(
        organization=organization,
        url=url.strip(),
        description=description.strip(),
        event_types=_known(event_types),
        created_by=actor,
    )
    endpoint.set_secret(secret)
    endpoint.save()
    _audit(endpoint, Action.WEBHOOK_CREATED, actor=actor, ip_address=ip_address, after=_describe(endpoint))
    return endpoint, secret


def _known(event_types):
    return [t for t in EventType.SUBSCRIBABLE if t in set(event_types)]


def _locked(organization, endpoint_id):
    return Endpoint.objects.select_for_update().get(organization=organization, pk=endpoint_id)


@transaction.atomic
def update_endpoint(
    *, organization: Organization, actor, endpoint_id: int, url: str, description: str, event_types, ip_address=None
) -> Endpoint:
    _require_manager(organization, actor)
    destinations.checked_addresses(url)
    endpoint = _locked(organization, endpoint_id)
    before = _describe(endpoint)
    endpoint.url, endpoint.description, endpoint.event_types = url.strip(), description.strip(), _known(event_types)
    endpoint.save(update_fields=["url", "description", "event_types"])
    if before != _describe(endpoint):
        _audit(
            endpoint,
            Action.WEBHOOK_CHANGED,
            actor=actor,
            ip_address=ip_address,
            before=before,
            after=_describe(endpoint),
        )
    return endpoint


@transaction.atomic
def roll_secret(*, organization: Organization, actor, endpoint_id: int, ip_address=None) -> tuple[Endpoint, str]:
    """A new signing secret; the current one stays valid for signing.ROLL_OVERLAP beside it."""
    _require_manager(organization, actor)
    endpoint = _locked(organization, endpoint_id)
    secret = signing.generate_secret()
    endpoint.set_secret(secret)
    endpoint.save(update_fields=["secret_encrypted", "previous_secret_encrypted", "previous_secret_expires_at"])
    _audit(
        endpoint,
        Action.WEBHOOK_SECRET_ROLLED,
        actor=actor,
        ip_address=ip_address,
        after={"previous_secret_valid_until": endpoint.previous_secret_expires_at.isoformat()},
    )
    return endpoint, secret


@transaction.atomic
def set_enabled(*, organization: Organization, actor, endpoint_id: int, enabled: bool) -> Endpoint:
    """Enabling starts afresh (no failures counted); disabling by hand stops new deliveries."""
    _require_manager(organization, actor)
    endpoint = _locked(organization, endpoint_id)
    if enabled:
        endpoint.disabled_at, endpoint.disabled_reason, endpoint.failing_since = None, "", None
    elif endpoint.disabled_at is None:
        endpoint.disabled_at, endpoint.disabled_reason = timezone.now(), f"Disabled by {actor.email}."
    endpoint.save(update_fields=["disabled_at", "disabled_reason", "failing_since"])
    return endpoint


@transaction.atomic
def delete_endpoint(*, organization: Organization, actor, endpoint_id: int, ip_address=None) -> None:
    _require_manager(organization, actor)
    endpoint = _locked(organization, endpoint_id)
    _audit(endpoint, Action.WEBHOOK_DELETED, actor=actor, ip_address=ip_address, before=_describe(endpoint))
    endpoint.delete()


@transaction.atomic
def send_test_event(*, organization: Organization, actor, endpoint_id: int) -> WebhookDelivery:
    """A `webhook.test` event for this endpoint alone, delivered like any other."""
    _require_manager(organization, actor)
    endpoint = _locked(organization, endpoint_id)
    (event,) = record_events(
        [
            NewEvent(
                organization.pk,
                EventType.TEST,
                {"message": "A test event sent from the Notifications page.", "actor": actor.email},
            )
        ]
    )
    # Its one delivery is made here, so fanning it out makes nothing more.
    now = timezone.now()
    event.fanned_out_at = now
    event.save(update_fields=["fanned_out_at"])
    delivery = WebhookDelivery.objects.create(
        event=event, endpoint=endpoint, next_attempt_at=now, enqueued_at=now, created_at=now
    )
    transaction.on_commit(lambda: enqueue_deliveries([delivery.pk]), robust=True)
    return delivery


@transaction.atomic
def send_again(*, organization: Organization, actor, delivery_id: int) -> WebhookDelivery:
    """Attempt the delivery once more, now; should it fail, retries follow on the usual schedule.
    Refused (Busy) while an attempt is under way."""
    _require_manager(organization, actor)
    delivery = (
        WebhookDelivery.objects.select_for_update(of=("self",))
        .select_related("endpoint", "event")
        .get(endpoint__organization=organization, pk=delivery_id)
    )
    if delivery.in_flight:
        raise Busy("This delivery is being attempted right now.")
    now = timezone.now()
    delivery.status, delivery.next_attempt_at, delivery.claimed_until, delivery.enqueued_at = (
        Status.PENDING,
        now,
        None,
        now,
    )
    delivery.save(update_fields=["status", "next_attempt_at", "claimed_until", "enqueued_at"])
    transaction.on_commit(lambda: enqueue_deliveries([delivery.pk]), robust=True)
    return delivery
