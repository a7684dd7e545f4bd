"""The minute job (`manage.py check_notifications`, from cron on any number of hosts at once).

It finds the events that time causes (subscriptions ending, offline licenses expiring, a day's peak
use near the quota), makes the daily digests, and hands the worker again whatever a crash left
behind. Every event and mail it makes carries a dedupe key the database holds unique, so two hosts
running it in the same second make each one once; every row it hands back is locked while it does."""

import math
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.db.models.functions import Now
from django_tasks_db.models import DBTaskResult

from licenses.models import LicensedUser, LicensePool, OfflineLicense, Product
from licenses.usage import DAILY, Period, usage_in_period
from organizations.models import MANAGER_ROLES, Membership
from sessions_app.actions import iso
from sessions_app.models import EngineSession

from . import messages
from .event_types import EventType
from .events import NewEvent, pool_data, record_events
from .models import AlertPreference, Event, Mail, MailKind, Status, WebhookDelivery
from .sending import enqueue_after_commit, new_mail
from .tasks import enqueue_deliveries, enqueue_fan_out, enqueue_mails

EXPIRING_DAYS = (30, 7, 1)
OFFLINE_EXPIRING_DAYS = 7
# An ended subscription is announced only this long after it ended, so a first run on an old
# installation does not announce every subscription that ever ended.
ENDED_LOOKBACK = timedelta(days=3)
QUOTA_WARNING_PERCENT = 80
# Work a live worker would have taken within seconds; older than this it is handed out again.
RECOVERY_AFTER = timedelta(minutes=5)
RECOVERY_BATCH = 500
EVENT_RETENTION = timedelta(days=90)
TASK_RESULT_RETENTION = timedelta(days=7)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Report:
    events: int
    digests: int
    handed_out_again: int
    pruned: int

    def __str__(self):
        return (
            f"{self.events} events, {self.digests} digests, {self.handed_out_again} handed to the worker again, "
            f"{self.pruned} old rows pruned"
        )


def run(now):
    """One pass; `now` is the job's clock (timezone-aware)."""
    events = len(_record(subscription_events(now) + offline_license_events(now) + quota_warnings(now)))
    digests = make_digests(now)
    handed_out = recover(now)
    # Pruning scans the history tables, so once an hour is plenty.
    pruned = prune(now) if now.minute == 0 else 0
    return Report(events=events, digests=digests, handed_out_again=handed_out, pruned=pruned)


def _record(new_events):
    with transaction.atomic():
        return record_events(new_events)


def _midnight(moment):
    return datetime.combine(moment.astimezone(UTC).date(), time.min, tzinfo=UTC)


def subscription_events(now):
    new_events = []
    expiring = LicensePool.objects.filter(expires_at__gt=now, expires_at__lte=now + EXPIRING_DAYS[0] * DAY)
    for pool in expiring.order_by("pk"):
        left = pool.expires_at - now
        # Only the nearest mark the subscription has passed: a pool bought with 5 days left is
        # told "5 days" once, not "30 days" and "7 days" in the same minute.
        mark = min(days for days in EXPIRING_DAYS if left <= days * DAY)
        new_events.append(
            NewEvent(
                pool.organization_id,
                EventType.SUBSCRIPTION_EXPIRING,
                {"pool": pool_data(pool), "days_left": math.ceil(left / DAY), "actor": None},
                f"pool {pool.pk} ends {iso(pool.expires_at)}, {mark} days",
            )
        )
    ended = LicensePool.objects.filter(expires_at__lte=now, expires_at__gt=now - ENDED_LOOKBACK)
    for pool in ended.order_by("pk"):
        new_events.append(
            NewEvent(
                pool.organization_id,
                EventType.SUBSCRIPTION_ENDED,
                {"pool": pool_data(pool), "actor": None},
                f"pool {pool.pk} ended {iso(pool.expires_at)}",
            )
        )
    return new_events


def offline_license_events(now):
    warning = OFFLINE_EXPIRING_DAYS * DAY
    expiring = (
        OfflineLicense.objects.filter(expires_at__gt=now, expires_at__lte=now + warning)
        # A license made to last a few days only is not news when those days run out.
        .filter(issued_at__lt=F("expires_at") - warning)
        .select_related("pool")
        .order_by("pk")
    )
    return [
        NewEvent(
            offline.pool.organization_id,
            EventType.OFFLINE_LICENSE_EXPIRING,
            {
                "offline_license": {
                    "license_id": offline.license_id,
                    "product": offline.pool.product,
                    "machine_id": offline.machine_id,
                    "expires_at": iso(offline.expires_at),
                },
                "days_left": math.ceil((offline.expires_at - now) / DAY),
                "actor": None,
            },
            f"offline {offline.license_id} expiring",
        )
        for offline in expiring
    ]


def quota_warnings(now):
    """Pools whose use today peaked at QUOTA_WARNING_PERCENT of the quota or more, once a day each.
    RE counts the day's peak of concurrent sessions (plus offline licenses), KSE its licensed users
    (plus offline licenses), which is what each quota limits."""
    today = _midnight(now)
    day = today.date().isoformat()
    pools = {pool.pk: pool for pool in LicensePool.objects.filter(quota__gt=0, starts_at__lte=now, expires_at__gt=now)}
    keys = {pk: f"pool {pk} {day}" for pk in pools}
    warned = set(
        Event.objects.filter(type=EventType.QUOTA_WARNING, dedupe_key__in=keys.values()).values_list(
            "dedupe_key", flat=True
        )
    )
    pools = {pk: pool for pk, pool in pools.items() if keys[pk] not in warned}
    offline = _count_per_pool(OfflineLicense.objects.unexpired(), pools)
    licensed_users = _count_per_pool(LicensedUser.objects.active(), pools)
    # Sessions that overlapped today bound the day's peak from above: one query rules out most pools
    # before any peak is computed.
    overlapping = _count_per_pool(
        EngineSession.objects.filter(started_at__lt=now).filter(
            Q(ended_at__gt=today) | Q(ended_at__isnull=True, lease_expires_at__gt=today)
        ),
        pools,
    )
    new_events = []
    for pk, pool in sorted(pools.items()):
        threshold = math.ceil(pool.quota * QUOTA_WARNING_PERCENT / 100)
        if pool.product == Product.KSE:
            peak = licensed_users.get(pk, 0) + offline.get(pk, 0)
        elif overlapping.get(pk, 0) + offline.get(pk, 0) < threshold or now <= today:
            continue
        else:
            buckets = usage_in_period(pool=pool, period=Period(today, now, DAILY, "today"), now=now).buckets
            peak = buckets[0].peak + offline.get(pk, 0)
        if peak < threshold:
            continue
        new_events.append(
            NewEvent(
                pool.organization_id,
                EventType.QUOTA_WARNING,
                {
                    "pool": pool_data(pool),
                    "date": day,
                    "peak": peak,
                    "percent": math.floor(peak * 100 / pool.quota),
                    "actor": None,
                },
                keys[pk],
            )
        )
    return new_events


def _count_per_pool(queryset, pools):
    rows = queryset.filter(pool__in=list(pools)).values("pool").annotate(n=Count("pk")).values_list("pool", "n")
    return dict(rows.order_by())


def make_digests(now):
    """Yesterday's digest (UTC) for every owner and admin who asked for one and has events in it."""
    end = _midnight(now)
    start = end - DAY
    day = start.date()
    preferences = (
        AlertPreference.objects.filter(daily_digest=True)
        .filter(
            Exists(
                Membership.objects.active().filter(
                    organization=OuterRef("organization"), user=OuterRef("user"), role__in=MANAGER_ROLES
                )
            ),
            user__is_active=True,
        )
        .select_related("organization", "user")
    )
    keys = {
        preference.pk: f"digest {preference.organization_id} {preference.user_id} {day}" for preference in preferences
    }
    made = set(Mail.objects.filter(dedupe_key__in=keys.values()).values_list("dedupe_key", flat=True))
    mails = []
    for preference in preferences:
        if keys[preference.pk] in made or not preference.event_types:
            continue
        events = list(
            Event.objects.for_org(preference.organization)
            .filter(created_at__gte=start, created_at__lt=end, type__in=preference.event_types)
            .select_related("organization")
            .order_by("created_at", "pk")
        )
        if not events:
            continue
        mail = new_mail(
            organization=preference.organization,
            recipient=preference.user,
            kind=MailKind.DIGEST,
            dedupe_key=keys[preference.pk],
            rendered=messages.digest(preference.organization, day, events),
            now=now,
        )
        with transaction.atomic():
            try:
                with transaction.atomic():
                    mail.save()
            except IntegrityError:
                continue  # another host made it a moment ago
            enqueue_after_commit([], [mail])
        mails.append(mail)
    return len(mails)


def recover(now):
    """Enqueue again what no task is going to reach: events not fanned out and attempts overdue long
    after a live worker would have made them (the process died before enqueueing, a worker was killed
    mid-attempt and its claim ran out, a task row was lost). While the worker is stopped this asks at
    most once per RECOVERY_AFTER per row; the claim on each row makes any duplicate task harmless."""
    stale = now - RECOVERY_AFTER
    handed_out = 0
    with transaction.atomic():
        events = list(
            Event.objects.filter(fanned_out_at__isnull=True, enqueued_at__lt=stale)
            .select_for_update(skip_locked=True)
            .order_by("pk")
            .values_list("pk", flat=True)[:RECOVERY_BATCH]
        )
        if events:
            Event.objects.filter(pk__in=events).update(enqueued_at=now)
            transaction.on_commit(lambda: enqueue_fan_out(events), robust=True)
        handed_out += len(events)
    for model, enqueue in ((WebhookDelivery, enqueue_deliveries), (Mail, enqueue_mails)):
        with transaction.atomic():
            rows = list(
                model.objects.claimable(now)
                .filter(next_attempt_at__lt=stale, enqueued_at__lt=stale)
                .select_for_update(skip_locked=True)
                .order_by("pk")
                .values_list("pk", flat=True)[:RECOVERY_BATCH]
            )
            if rows:
                model.objects.filter(pk__in=rows).update(enqueued_at=now)
                transaction.on_commit(lambda rows=rows, enqueue=enqueue: enqueue(rows), robust=True)
            handed_out += len(rows)
    return handed_out


def prune(now):
    """Drop events (with their deliveries) and mails past EVENT_RETENTION, and the task queue's
    finished rows past TASK_RESULT_RETENTION, with rows of tasks whose worker died mid-run (they stay
    RUNNING in django-tasks-db forever; the attempt they carried was handed out again by `recover`)."""
    cutoff = now - EVENT_RETENTION
    events, _ = Event.objects.filter(created_at__lt=cutoff).delete()
    mails, _ = Mail.objects.filter(created_at__lt=cutoff).exclude(status=Status.PENDING).delete()
    task_cutoff = now - TASK_RESULT_RETENTION
    tasks, _ = (
        DBTaskResult.objects.filter(task_path__startswith=f"{__package__}.tasks.")
        .filter(Q(finished_at__lt=task_cutoff) | Q(status="RUNNING", started_at__lt=Now() - DAY))
        .delete()
    )
    return events + mails + tasks
