import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Case, Count, Exists, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce, Least, Now
from django.utils import timezone

from licenses.models import LicensePool


class EndReason(models.TextChoices):
    RELEASED = "released", "Released by the engine"
    EXPIRED = "expired", "Lease expired"
    WITHDRAWN = "withdrawn", "Ended by an admin"
    MACHINE_DEACTIVATED = "machine_deactivated", "Machine deactivated"
    MEMBER_REMOVED = "member_removed", "Member removed"
    SIGNED_IN_ELSEWHERE = "signed_in_elsewhere", "Signed in elsewhere"
    LICENSE_EXPIRED = "license_expired", "Subscription ended"
    QUOTA_REDUCED = "quota_reduced", "Quota reduced"


class MachineQuerySet(models.QuerySet):
    def registered(self):
        return self.filter(deactivated_at__isnull=True)

    def for_org(self, organization):
        return self.filter(pool__organization=organization)

    def deactivate(self, reason):
        """Deregister these machines (their sessions must be ended by the caller first)."""
        return self.filter(deactivated_at__isnull=True).update(deactivated_at=Now(), deactivation_reason=reason)

    def sessions_ended(self):
        """Sessions on these machines just ended: the machines were seen now, and an ephemeral one
        left without a live session is deregistered."""
        self.update(last_seen_at=Now())
        self.filter(ephemeral=True).exclude(
            Exists(EngineSession.objects.live().filter(machine=OuterRef("pk")))
        ).deactivate("ephemeral")

    def idle_for_pool(self, pool):
        """Registered machines of the pool idle longer than its idle limit, by the database's clock:
        not seen within it, and no session on them open (live or lapsed) or ended within it. Due for
        deregistration. A machine with a live or recently live session is never among them, however
        stale its last_seen_at (which heartbeats only refresh every MACHINE_SEEN_RESOLUTION)."""
        if not pool.machine_idle_days:
            return self.none()
        cutoff = Now() - timedelta(days=pool.machine_idle_days)
        recent_session = EngineSession.objects.filter(machine=OuterRef("pk")).filter(
            Q(ended_at__isnull=True) | Q(ended_at__gt=cutoff)
        )
        return self.filter(pool=pool, deactivated_at__isnull=True, last_seen_at__lt=cutoff).exclude(
            Exists(recent_session)
        )


# Heartbeats move a machine's last_seen_at only once it is this old: idle limits are whole days,
# and a write to the machine row on every heartbeat would double the hot path's writes.
MACHINE_SEEN_RESOLUTION = timedelta(minutes=15)


class Machine(models.Model):
    """A machine id registered with a pool. Registered machines count against the machine quota."""

    pool = models.ForeignKey(LicensePool, on_delete=models.CASCADE, related_name="machines")
    machine_id = models.CharField(max_length=128)
    hostname = models.CharField(max_length=255, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="machines",
        help_text="Who activated on it last.",
    )
    ephemeral = models.BooleanField(default=False, help_text="Deregistered as soon as its last session ends.")
    registered_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    deactivation_reason = models.CharField(max_length=32, blank=True)

    objects = MachineQuerySet.as_manager()

    class Meta:
        ordering = ["-last_seen_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["pool", "machine_id"],
                condition=Q(deactivated_at__isnull=True),
                name="one_registration_per_machine_per_pool",
            ),
        ]
        indexes = [models.Index(fields=["pool", "machine_id"], name="machine_pool_mid")]

    def __str__(self):
        return self.machine_id

    @property
    def is_registered(self):
        return self.deactivated_at is None


def generate_session_id():
    return "s_" + secrets.token_urlsafe(18)


class EngineSessionQuerySet(models.QuerySet):
    def live(self):
        """Sessions holding a license now. The database clock decides, so every web process agrees
        and a lapsed lease stops counting the moment it lapses, before any cleanup runs."""
        return self.filter(ended_at__isnull=True, lease_expires_at__gt=Now())

    def lapsed(self):
        """Not ended, but the lease ran out: they hold nothing and are waiting to be marked expired."""
        return self.filter(ended_at__isnull=True, lease_expires_at__lte=Now())

    def for_org(self, organization):
        return self.filter(pool__organization=organization)

    def end(self, reason):
        """End these sessions now. Lapsed ones are recorded as expired at their lease's end, since
        that is when they stopped holding a license. Ephemeral machines left without a live session
        are deregistered. Returns the number of sessions ended with `reason`."""
        open_sessions = self.filter(ended_at__isnull=True)
        machine_ids = list(open_sessions.values_list("machine_id", flat=True).distinct())
        if not machine_ids:
            return 0
        open_sessions.filter(lease_expires_at__lte=Now()).update(
            ended_at=models.F("lease_expires_at"), end_reason=EndReason.EXPIRED
        )
        ended = open_sessions.filter(lease_expires_at__gt=Now()).update(ended_at=Now(), end_reason=reason)
        Machine.objects.filter(pk__in=machine_ids).sessions_ended()
        return ended

    def expire_lapsed(self, limit):
        """End up to `limit` of these sessions whose lease ran out (reason expired, at the lease's
        end), as end() does, in three statements: the ones to end are chosen and locked in one, and
        rows another transaction holds (a heartbeat or release ending them itself) are left to it.
        Returns how many ended."""
        lapsed = list(
            self.lapsed()
            .order_by("lease_expires_at", "pk")
            .select_for_update(skip_locked=True)
            .values_list("pk", "machine_id")[:limit]
        )
        if not lapsed:
            return 0
        self.filter(pk__in=[pk for pk, _machine in lapsed]).update(
            ended_at=models.F("lease_expires_at"), end_reason=EndReason.EXPIRED
        )
        Machine.objects.filter(pk__in={machine for _pk, machine in lapsed}).sessions_ended()
        return len(lapsed)


class EngineSession(models.Model):
    """One engine process holding one online license: a lease kept alive by heartbeats."""

    public_id = models.CharField(max_length=40, unique=True, default=generate_session_id, editable=False)
    pool = models.ForeignKey(LicensePool, on_delete=models.CASCADE, related_name="sessions")
    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="sessions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="engine_sessions")
    hostname = models.CharField(max_length=255, blank=True)
    engine_version = models.CharField(max_length=64, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    lease_expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=32, choices=EndReason.choices, blank=True)

    objects = EngineSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True, end_reason="") | Q(ended_at__isnull=False) & ~Q(end_reason=""),
                name="session_end_has_reason",
            ),
        ]
        indexes = [
            # The quota count on every activation: open sessions of one pool by lease end.
            models.Index(
                fields=["pool", "lease_expires_at"], condition=Q(ended_at__isnull=True), name="session_open_by_pool"
            ),
            models.Index(fields=["pool", "started_at"], name="session_pool_started"),
            models.Index(fields=["user", "ended_at"], name="session_user_ended"),
            models.Index(fields=["machine", "ended_at"], name="session_machine_ended"),
        ]

    def __str__(self):
        return self.public_id

    @property
    def is_live(self):
        return self.ended_at is None and self.lease_expires_at > timezone.now()

    @property
    def short_id(self):
        """Enough of the id to tell two sessions on one machine apart at a glance (48 random bits)."""
        return self.public_id[:10]

    @property
    def termination_reason(self):
        """Why a session that no longer holds a license ended (lapsed leases count as expired)."""
        return self.end_reason or EndReason.EXPIRED


def generate_ticket_id():
    return "q_" + secrets.token_urlsafe(18)


class TicketOutcome(models.TextChoices):
    GRANTED = "granted", "Granted a license"
    EXPIRED = "expired", "Waited its longest"
    DROPPED = "dropped", "Stopped polling"
    REMOVED = "removed", "Removed by an admin"
    MEMBER_REMOVED = "member_removed", "Member removed"


class QueueTicketQuerySet(models.QuerySet):
    def waiting(self, now=None):
        """Tickets still in line: not ended, polled in time and not past their longest wait, by the
        database's clock (or `now`, a time read from it). A ticket whose holder stopped polling leaves
        the line the moment its poll_before passes, before any cleanup marks it, and a license set
        aside for it is free again."""
        now = now or Now()
        return self.filter(ended_at__isnull=True, poll_before__gt=now, expires_at__gt=now)

    def with_position(self, now=None):
        """Each ticket's place in its pool's line as `position`: 1 + the tickets waiting ahead of it
        (by the database's clock, or `now`), whatever else filters this query."""
        ahead = (
            QueueTicket.objects.waiting(now)
            .filter(pool_id=OuterRef("pool_id"), id__lt=OuterRef("id"))
            .order_by()
            .values("pool_id")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return self.annotate(position=Coalesce(Subquery(ahead), 0) + 1)

    def in_line(self):
        """The waiting tickets in line order, with their positions."""
        return self.waiting().with_position().order_by("id")

    def lapsed(self):
        """Not ended, but not polled by poll_before: dropped, waiting to be marked."""
        return self.filter(ended_at__isnull=True, poll_before__lte=Now())

    def end(self, outcome):
        """End these tickets now, if still open. Returns how many ended."""
        return self.filter(ended_at__isnull=True).update(ended_at=Now(), outcome=outcome)

    def end_lapsed(self):
        """Mark the tickets that left the line by themselves: at their poll_before (dropped), or at
        their expires_at when that came first and no poll followed (expired). Only a mark for the
        pages: the line already ignores them. Returns how many were marked."""
        return self.lapsed().update(
            ended_at=Least(models.F("poll_before"), models.F("expires_at")),
            outcome=Case(
                When(expires_at__lte=models.F("poll_before"), then=Value(TicketOutcome.EXPIRED)),
                default=Value(TicketOutcome.DROPPED),
            ),
        )


class QueueTicket(models.Model):
    """An RE activation waiting in its pool's line for a license (contract: "Waiting for a license").

    The line is first come, first served by id: tickets are created under the pool's lock, so ids
    follow the order in which engines asked. Ended tickets are kept for the record; the usage page
    reads waits from QueueWaitHour."""

    public_id = models.CharField(max_length=40, unique=True, default=generate_ticket_id, editable=False)
    pool = models.ForeignKey(LicensePool, on_delete=models.CASCADE, related_name="queue_tickets")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="queue_tickets")
    machine_id = models.CharField(max_length=128)
    hostname = models.CharField(max_length=255, blank=True)
    joined_at = models.DateTimeField()
    last_polled_at = models.DateTimeField()
    poll_before = models.DateTimeField(help_text="Dropped from the line unless polled before this.")
    expires_at = models.DateTimeField(help_text="Joining time plus the longest wait asked for.")
    ended_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=32, choices=TicketOutcome.choices, blank=True)
    session = models.OneToOneField(
        EngineSession, on_delete=models.SET_NULL, null=True, blank=True, related_name="queue_ticket"
    )

    objects = QueueTicketQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True, outcome="") | Q(ended_at__isnull=False) & ~Q(outcome=""),
                name="ticket_end_has_outcome",
            ),
        ]
        indexes = [
            # Every activation counts the pool's waiting tickets: only open ones are indexed, so the
            # index stays as small as the line however long the history grows.
            models.Index(
                fields=["pool", "poll_before"], condition=Q(ended_at__isnull=True), name="ticket_open_by_pool"
            ),
        ]

    def __str__(self):
        return self.public_id


class QuotaRefusalHour(models.Model):
    """How many activations of a pool were refused for its session quota in one UTC hour: the
    usage page's "refused" figure. A counter per hour, not a row per refusal, so the page sums a few
    rows per bucket whatever the volume; every bucket of the page is a whole number of hours."""

    pool = models.ForeignKey(LicensePool, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField(help_text="The hour's start, a whole UTC hour.")
    refusals = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["pool", "hour"], name="one_refusal_count_per_pool_hour")]

    def __str__(self):
        return f"{self.pool_id} {self.hour:%Y-%m-%d %H:00}: {self.refusals} refused"


def wait_resolution(seconds):
    """How finely QueueWaitHour keeps a wait: to the second below ten minutes, to ten seconds below an
    hour, to the minute beyond. Returns the wait rounded down to that."""
    seconds = max(0, int(seconds))
    if seconds < 600:
        return seconds
    if seconds < 3600:
        return seconds - seconds % 10
    return seconds - seconds % 60


class QueueWaitHour(models.Model):
    """How many engines of a pool got a license in one UTC hour after waiting `wait_seconds` in line
    (wait_resolution). Counters, not a row per wait: the usage page's waits per bar, with exact
    (to that resolution) medians and percentiles, read a few rows per hour whatever the volume."""

    pool = models.ForeignKey(LicensePool, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField(help_text="The hour the license was granted in, a whole UTC hour.")
    wait_seconds = models.PositiveIntegerField()
    waits = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["pool", "hour", "wait_seconds"], name="one_wait_count_per_pool_hour_wait")
        ]

    def __str__(self):
        return f"{self.pool_id} {self.hour:%Y-%m-%d %H:00}: {self.waits} waited {self.wait_seconds} s"


API_KEY_PREFIX = "kat_"


def hash_api_key(raw_key):
    # API keys carry 190+ bits of entropy, so a fast keyed hash is enough: a stolen table cannot be
    # brute-forced, and hashing costs microseconds on the hot path instead of a password hasher's 100 ms.
    return hmac.new(settings.SECRET_KEY.encode(), raw_key.encode(), hashlib.sha256).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def usable(self):
        return self.filter(revoked_at__isnull=True, user__is_active=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=Now())
        )


class ApiKey(models.Model):
    """A person's key for the engine API. Only its hash is stored; the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    organization = models.ForeignKey(
        "organizations.Organization",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="api_keys",
        help_text="When set, the key works only for this organization.",
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The key's first characters, to recognise it by.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate():
        """A new raw key: recognisable prefix, then 32 random bytes."""
        return API_KEY_PREFIX + secrets.token_urlsafe(32)

    @property
    def status(self):
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class IdempotencyRecord(models.Model):
    """The first answer to a request carrying an Idempotency-Key, replayed to its retries made with
    the same API key. Scoped to the API key, not its person: one person's keys may be restricted to
    different organizations, and a retry with another key is another request, decided afresh."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Empty while in progress.")
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "key"], name="one_record_per_api_key_and_idempotency_key")
        ]

    def __str__(self):
        return self.key
