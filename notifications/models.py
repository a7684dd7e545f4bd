import secrets
from datetime import UTC

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from organizations.models import Organization

from . import signing
from .event_types import EventType


def generate_event_id():
    # The `webhook-id` receivers deduplicate by: unique, unguessable, the same on every retry.
    return "evt_" + secrets.token_urlsafe(18)


class OrganizationQuerySet(models.QuerySet):
    def for_org(self, organization):
        return self.filter(organization=organization)


class Event(models.Model):
    """Something an organization's people or systems may want to hear about. Written in the
    transaction of the change that causes it (the outbox), fanned out to webhook deliveries and
    mails by the worker."""

    public_id = models.CharField(max_length=40, unique=True, default=generate_event_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="notification_events")
    type = models.CharField(max_length=64)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    # What makes the event the only one of its cause ("pool 7, hour 2026-11-28T10" for quota.reached),
    # so that hosts finding the same cause at once insert one event; empty for events that are
    # simply one per change.
    dedupe_key = models.CharField(max_length=200, null=True, blank=True)
    fanned_out_at = models.DateTimeField(null=True, blank=True, help_text="When its deliveries and mails were made.")
    # When a task was last asked to fan it out; housekeeping asks again only long after that.
    enqueued_at = models.DateTimeField(default=timezone.now)

    objects = OrganizationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["type", "dedupe_key"], name="one_event_per_cause")]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="event_org_time"),
            models.Index(fields=["created_at"], name="event_time"),
            models.Index(fields=["enqueued_at"], condition=Q(fanned_out_at__isnull=True), name="event_not_fanned_out"),
        ]

    def __str__(self):
        return f"{self.type} {self.public_id}"

    @property
    def label(self):
        return EventType.label(self.type)

    def payload(self):
        """The JSON body every webhook delivery of this event carries."""
        return {
            "id": self.public_id,
            "type": self.type,
            "created_at": self.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "organization": {"id": self.organization.public_id, "name": self.organization.name},
            "data": self.data,
        }


class EndpointQuerySet(OrganizationQuerySet):
    def enabled(self):
        return self.filter(disabled_at__isnull=True)


class Endpoint(models.Model):
    """A URL that receives an organization's events as signed POSTs."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.CharField(max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    # The event types it receives; empty receives every type, those added later included.
    event_types = models.JSONField(default=list, blank=True)
    # Signing secrets are needed in the clear to sign, so they cannot be hashed like API keys; they
    # are encrypted with a key derived from SECRET_KEY, so a copy of the database alone reveals none.
    secret_encrypted = models.TextField()
    previous_secret_encrypted = models.TextField(blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    failing_since = models.DateTimeField(null=True, blank=True, help_text="First failure since the last success.")
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=300, blank=True)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return self.url

    @property
    def is_enabled(self):
        return self.disabled_at is None

    def receives(self, event_type):
        return not self.event_types or event_type in self.event_types

    def set_secret(self, secret):
        """Make `secret` the signing secret; the one it replaces stays valid for the overlap."""
        if self.secret_encrypted:
            self.previous_secret_encrypted = self.secret_encrypted
            self.previous_secret_expires_at = timezone.now() + signing.ROLL_OVERLAP
        self.secret_encrypted = signing.encrypt(secret)

    def signing_secrets(self, now=None):
        """The secrets valid now, newest first: each attempt is signed with every one of them."""
        now = now or timezone.now()
        valid = [signing.decrypt(self.secret_encrypted)]
        if self.previous_secret_encrypted and self.previous_secret_expires_at and self.previous_secret_expires_at > now:
            valid.append(signing.decrypt(self.previous_secret_encrypted))
        return valid


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Delivered"
    FAILED = "failed", "Failed"


class OutgoingQuerySet(models.QuerySet):
    def claimable(self, now):
        """Due, and not in a worker's hands (a claim that ran out belongs to a worker that died)."""
        return self.filter(status=Status.PENDING, next_attempt_at__lte=now).filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
        )


class Outgoing(models.Model):
    """What the worker sends, with the state of its attempts. Kept in the database, so a stopped or
    killed worker loses nothing: a pending row is sent when a worker next gets to it."""

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    # A worker sending it holds it until then; past that the worker is taken for dead.
    claimed_until = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(default=timezone.now, help_text="When a task was last asked to send it.")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OutgoingQuerySet.as_manager()

    class Meta:
        abstract = True

    @property
    def in_flight(self):
        return self.claimed_until is not None and self.claimed_until > timezone.now()


class WebhookDelivery(Outgoing):
    """One event to one endpoint, over as many attempts as it takes."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    objects = OutgoingQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["event", "endpoint"], name="one_delivery_per_endpoint")]
        indexes = [
            models.Index(fields=["endpoint", "-created_at"], name="delivery_endpoint_time"),
            models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="delivery_pending_due"),
        ]

    def __str__(self):
        return f"{self.event} to {self.endpoint}"


class MailKind(models.TextChoices):
    ALERT = "alert", "Alert"
    DIGEST = "digest", "Daily digest"
    ENDPOINT_DISABLED = "endpoint_disabled", "Webhook endpoint disabled"


class Mail(Outgoing):
    """A mail to one person, rendered when it is made so that every attempt sends the same text."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="notification_mails")
    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=20, choices=MailKind.choices)
    # One mail per cause and person ("digest of 2026-11-28 for person 4"), however many hosts make it.
    dedupe_key = models.CharField(max_length=200, unique=True)
    subject = models.CharField(max_length=300)
    body = models.TextField()

    objects = OutgoingQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="mail_pending_due")]

    def __str__(self):
        return f"{self.subject} to {self.recipient}"


class AlertPreference(models.Model):
    """Which events one owner or admin is mailed about in one organization. Without a row the
    defaults apply (EventType.MAILED_BY_DEFAULT, one mail per event)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alert_preferences")
    event_types = models.JSONField(default=list, blank=True)
    daily_digest = models.BooleanField(default=False, help_text="One mail a day with the day's events instead.")
    updated_at = models.DateTimeField(auto_now=True)

    objects = OrganizationQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="one_alert_preference")]

    def __str__(self):
        return f"Alerts of {self.user} in {self.organization}"

    @classmethod
    def default(cls, *, organization, user):
        return cls(organization=organization, user=user, event_types=list(EventType.MAILED_BY_DEFAULT))

    def wants(self, event_type):
        return event_type in self.event_types
