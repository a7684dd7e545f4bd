"""What the worker does: fan events out into webhook deliveries and mails, and make their attempts.

Every row is claimed by a conditional UPDATE before it is worked on, so any number of workers on any
number of hosts may run the same tasks at once and each attempt is made by one of them. A claim
lasts CLAIM_DURATION; a worker killed mid-attempt leaves a claim that runs out, and the row is then
attempted again (receivers deduplicate by `webhook-id`, which is the same on every attempt)."""

import json
import logging
import random
import smtplib
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from organizations.models import MANAGER_ROLES, Membership

# A module import: tasks.py imports this module in turn.
from . import destinations, messages, signing, tasks
from .event_types import EventType
from .models import AlertPreference, Endpoint, Event, Mail, MailKind, Status, WebhookDelivery

logger = logging.getLogger(__name__)

# Waits before each retry, as Standard Webhooks suggests: eight attempts over about 28 hours.
RETRY_SCHEDULE = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
# Each wait is stretched or shrunk by up to this fraction, so receivers coming back from an outage
# are not hit by every retry in the same second.
JITTER = 0.1
# Longer than an attempt can take (destinations.TIMEOUT, a slow name lookup, a slow mail server).
CLAIM_DURATION = timedelta(minutes=2)
# An endpoint that has not taken a delivery for this long since it began failing is disabled.
FAILING_LIMIT = timedelta(hours=24)
# Statuses besides 5xx that say "try again later".
RETRYABLE_STATUSES = {408, 425, 429}


def retry_delay(attempts_made):
    """The wait after the `attempts_made`-th failed attempt, or None when none is left."""
    if attempts_made > len(RETRY_SCHEDULE):
        return None
    return RETRY_SCHEDULE[attempts_made - 1] * random.uniform(1 - JITTER, 1 + JITTER)


# Fanning out


def fan_out(event_ids):
    """Make the deliveries and mails of these events, once: the events are locked and marked in the
    transaction that makes them, and a second worker skips them."""
    with transaction.atomic():
        events = list(
            Event.objects.filter(pk__in=event_ids, fanned_out_at__isnull=True)
            .select_for_update(skip_locked=True, of=("self",))
            .select_related("organization")
            .order_by("pk")
        )
        if not events:
            return
        now = timezone.now()
        by_organization = defaultdict(list)
        for event in events:
            by_organization[event.organization].append(event)
        deliveries, mails = [], []
        for organization, organization_events in by_organization.items():
            deliveries += _deliveries(organization, organization_events, now)
            mails += _alert_mails(organization, organization_events, now)
        WebhookDelivery.objects.bulk_create(deliveries)
        Mail.objects.bulk_create(mails)
        Event.objects.filter(pk__in=[event.pk for event in events]).update(fanned_out_at=now)
        enqueue_after_commit(deliveries, mails)


def _deliveries(organization, events, now):
    endpoints = list(Endpoint.objects.for_org(organization).enabled())
    return [
        WebhookDelivery(event=event, endpoint=endpoint, next_attempt_at=now, enqueued_at=now, created_at=now)
        for event in events
        for endpoint in endpoints
        # An endpoint hears of what happened after it was added, not before.
        if event.type != EventType.TEST and endpoint.created_at <= event.created_at and endpoint.receives(event.type)
    ]


def _alert_mails(organization, events, now):
    recipients = alert_recipients(organization)
    mails = []
    for event in events:
        wanting = [
            user for user, preference in recipients if preference.wants(event.type) and not preference.daily_digest
        ]
        if not wanting:
            continue
        rendered = messages.alert(event)
        mails += [
            new_mail(
                organization=organization,
                recipient=user,
                kind=MailKind.ALERT,
                dedupe_key=f"alert {event.pk} {user.pk}",
                rendered=rendered,
                now=now,
            )
            for user in wanting
        ]
    return mails


def alert_recipients(organization):
    """(user, preference) of each owner and admin, the defaults standing in for a missing preference."""
    managers = [
        membership.user
        for membership in Membership.objects.active()
        .for_org(organization)
        .filter(role__in=MANAGER_ROLES, user__is_active=True)
        .select_related("user")
    ]
    preferences = {preference.user_id: preference for preference in AlertPreference.objects.for_org(organization)}
    return [
        (user, preferences.get(user.pk) or AlertPreference.default(organization=organization, user=user))
        for user in managers
    ]


def new_mail(*, organization, recipient, kind, dedupe_key, rendered, now):
    subject, body = rendered
    return Mail(
        organization=organization,
        recipient=recipient,
        kind=kind,
        dedupe_key=dedupe_key,
        subject=subject,
        body=body,
        next_attempt_at=now,
        enqueued_at=now,
        created_at=now,
    )


def enqueue_after_commit(deliveries, mails):
    # One task per endpoint, so that one slow receiver does not hold up the others and each endpoint
    # gets its events in order; one for the mails.
    per_endpoint = defaultdict(list)
    for delivery in deliveries:
        per_endpoint[delivery.endpoint_id].append(delivery.pk)
    mail_ids = [mail.pk for mail in mails]

    def enqueue():
        for ids in per_endpoint.values():
            tasks.enqueue_deliveries(ids)
        tasks.enqueue_mails(mail_ids)

    transaction.on_commit(enqueue, robust=True)


# Attempts


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    retry: bool = False
    error: str = ""


def _claim(model, pk, *related):
    """Take the row for one attempt, or None when it is not due, finished, or in another worker's hands."""
    now = timezone.now()
    claimed = (
        model.objects.claimable(now)
        .filter(pk=pk)
        .update(claimed_until=now + CLAIM_DURATION, attempts=F("attempts") + 1, last_attempt_at=now)
    )
    return model.objects.select_related(*related).get(pk=pk) if claimed else None


def _settle(row, outcome, **fields):
    """Record the attempt's outcome and schedule the next one. Returns (settled, next attempt time):
    not settled when the claim ran out and another worker took the row over meanwhile."""
    now = timezone.now()
    fields |= {"claimed_until": None, "last_error": outcome.error[:500]}
    delay = retry_delay(row.attempts) if not outcome.succeeded and outcome.retry else None
    next_attempt_at = now + delay if delay is not None else None
    if outcome.succeeded:
        fields |= {"status": Status.SUCCEEDED, "next_attempt_at": None}
    elif next_attempt_at is not None:
        fields |= {"next_attempt_at": next_attempt_at, "enqueued_at": now}
    else:
        fields |= {"status": Status.FAILED, "next_attempt_at": None}
    settled = type(row).objects.filter(pk=row.pk, status=Status.PENDING, attempts=row.attempts).update(**fields)
    return bool(settled), next_attempt_at


def attempt_webhook(delivery_id):
    delivery = _claim(WebhookDelivery, delivery_id, "event__organization", "endpoint")
    if delivery is None:
        return
    event, endpoint = delivery.event, delivery.endpoint
    started = time.monotonic()
    status = None
    if not endpoint.is_enabled and event.type != EventType.TEST:
        outcome = Outcome(False, error="The endpoint is disabled.")
    else:
        outcome, status = _post(endpoint, event)
    duration_ms = int((time.monotonic() - started) * 1000)
    with transaction.atomic():
        settled, next_attempt_at = _settle(delivery, outcome, response_status=status, duration_ms=duration_ms)
        if not settled:
            return
        _note_health(endpoint, outcome)
        if next_attempt_at is not None:
            transaction.on_commit(lambda: tasks.enqueue_deliveries([delivery.pk], at=next_attempt_at), robust=True)


def _post(endpoint, event):
    """One signed POST of the event; returns (Outcome, HTTP status or None)."""
    body = json.dumps(event.payload(), separators=(",", ":"), ensure_ascii=False)
    # Signed afresh on every attempt: the timestamp is the attempt's.
    attempted_at = timezone.now()
    try:
        headers = signing.headers(
            message_id=event.public_id,
            timestamp=attempted_at,
            body=body,
            signing_secrets=endpoint.signing_secrets(attempted_at),
        )
        response = destinations.post(endpoint.url, body=body.encode(), headers=headers)
    except (destinations.RefusedDestination, signing.SecretUnreadable) as refusal:
        # Not retried: only the operator or an admin can change this.
        return Outcome(False, error=str(refusal)), None
    except destinations.UnreachableDestination as error:
        return Outcome(False, retry=True, error=str(error)), None
    if 200 <= response.status < 300:
        return Outcome(True), response.status
    retry = response.status >= 500 or response.status in RETRYABLE_STATUSES
    error = f"HTTP {response.status}: {response.excerpt[:300]}".strip()
    return Outcome(False, retry=retry, error=error), response.status


def _note_health(endpoint, outcome):
    now = timezone.now()
    if outcome.succeeded:
        Endpoint.objects.filter(pk=endpoint.pk, failing_since__isnull=False).update(failing_since=None)
        return
    Endpoint.objects.filter(pk=endpoint.pk, failing_since__isnull=True).update(failing_since=now)
    disable_if_failing(endpoint.pk, now=now)


def disable_if_failing(endpoint_id, *, now):
    """Disable the endpoint if nothing reached it for FAILING_LIMIT, drop its pending deliveries and
    mail the organization's owners and admins. The conditional UPDATE makes one caller do it."""
    cutoff = now - FAILING_LIMIT
    with transaction.atomic():
        disabled = Endpoint.objects.filter(pk=endpoint_id, disabled_at__isnull=True, failing_since__lte=cutoff).update(
            disabled_at=now,
            disabled_reason=f"No delivery succeeded for {FAILING_LIMIT.total_seconds() / 3600:g} hours.",
        )
        if not disabled:
            return False
        endpoint = Endpoint.objects.select_related("organization").get(pk=endpoint_id)
        WebhookDelivery.objects.filter(endpoint=endpoint, status=Status.PENDING).update(
            status=Status.FAILED,
            next_attempt_at=None,
            claimed_until=None,
            last_error="Not sent: the endpoint was disabled.",
        )
        rendered = messages.endpoint_disabled(endpoint)
        mails = Mail.objects.bulk_create(
            [
                new_mail(
                    organization=endpoint.organization,
                    recipient=user,
                    kind=MailKind.ENDPOINT_DISABLED,
                    dedupe_key=f"endpoint disabled {endpoint.pk} {now.isoformat()} {user.pk}",
                    rendered=rendered,
                    now=now,
                )
                for user, _preference in alert_recipients(endpoint.organization)
            ]
        )
        enqueue_after_commit([], mails)
    return True


def attempt_mail(mail_id):
    mail = _claim(Mail, mail_id, "recipient")
    if mail is None:
        return
    recipient = mail.recipient
    if not recipient.is_active:
        outcome = Outcome(False, error="The account is deactivated.")
    else:
        try:
            send_mail(mail.subject, mail.body, settings.DEFAULT_FROM_EMAIL, [recipient.email])
        except (smtplib.SMTPException, OSError) as error:
            outcome = Outcome(False, retry=True, error=f"The mail server refused or could not be reached: {error}")
        else:
            outcome = Outcome(True)
    with transaction.atomic():
        settled, next_attempt_at = _settle(mail, outcome)
        if settled and next_attempt_at is not None:
            transaction.on_commit(lambda: tasks.enqueue_mails([mail.pk], at=next_attempt_at), robust=True)
