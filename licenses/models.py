import fnmatch
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from organizations.models import Membership, Organization


class Product(models.TextChoices):
    KSE = "KSE", "Katalon Studio Enterprise"
    RE = "RE", "Katalon Runtime Engine"


DEFAULT_LEASE_SECONDS = 300
MINIMUM_LEASE_SECONDS = 30
# The largest value the PositiveIntegerField columns hold on every database.
MAXIMUM_COUNT = 2_147_483_647
# A century: any longer and "now minus the idle limit" falls before the first date Python can hold.
MAXIMUM_MACHINE_IDLE_DAYS = 36_500
MACHINE_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def is_valid_machine_id(machine_id):
    return isinstance(machine_id, str) and MACHINE_ID_PATTERN.fullmatch(machine_id) is not None


def end_of_day(day):
    """Subscriptions and offline licenses run to the last second of their final day, in UTC."""
    return datetime.combine(day, time(23, 59, 59), tzinfo=UTC)


def default_expiry(starts_at):
    """One year of subscription: a pool starting on 28 November runs to the end of 27 November."""
    start_day = starts_at.astimezone(UTC).date()
    if start_day.year == date.max.year:
        # There is no next year to run to: the subscription runs to the last day there is.
        return end_of_day(date.max)
    try:
        anniversary = start_day.replace(year=start_day.year + 1)
    except ValueError:  # 29 February
        anniversary = start_day.replace(year=start_day.year + 1, day=28) + timedelta(days=1)
    return end_of_day(anniversary - timedelta(days=1))


def pool_term_errors(*, quota, machine_quota, starts_at, expires_at, lease_seconds, machine_idle_days):
    """What is wrong with a pool's terms, by field; empty when they are sound. Shared by the
    provisioning action, the admin form and the management command so all three refuse alike."""
    errors = {}
    for field, value, label in (("quota", quota, "The quota"), ("machine_quota", machine_quota, "The machine quota")):
        if isinstance(value, bool) or not isinstance(value, int):
            errors[field] = f"{label} must be a whole number."
        elif value < 0:
            errors[field] = f"{label} cannot be negative."
        elif value > MAXIMUM_COUNT:
            errors[field] = f"{label} must be at most {MAXIMUM_COUNT}."
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int):
        errors["lease_seconds"] = "The lease must be a whole number of seconds."
    elif lease_seconds < MINIMUM_LEASE_SECONDS:
        errors["lease_seconds"] = f"The lease must be at least {MINIMUM_LEASE_SECONDS} seconds."
    elif lease_seconds > MAXIMUM_COUNT:
        errors["lease_seconds"] = f"The lease must be at most {MAXIMUM_COUNT} seconds."
    if machine_idle_days is not None and (
        isinstance(machine_idle_days, bool) or not isinstance(machine_idle_days, int) or machine_idle_days < 0
    ):
        errors["machine_idle_days"] = "The machine idle limit must be a number of days (0 keeps machines registered)."
    elif machine_idle_days is not None and machine_idle_days > MAXIMUM_MACHINE_IDLE_DAYS:
        errors["machine_idle_days"] = f"The machine idle limit must be at most {MAXIMUM_MACHINE_IDLE_DAYS} days."
    if starts_at is not None and expires_at is not None and expires_at <= starts_at:
        errors["expires_at"] = "The subscription must end after it starts."
    return errors


def count_in_pool(queryset):
    """An annotation for a LicensePool query: how many rows of `queryset` belong to each pool, as a
    subquery, so several counts of one pool come back in a single statement."""
    per_pool = queryset.filter(pool=models.OuterRef("pk")).order_by().values("pool")
    return Coalesce(models.Subquery(per_pool.annotate(n=models.Count("pk")).values("n")), 0)


@dataclass(frozen=True)
class PoolUsage:
    """A pool's figures, as the Licenses page shows them and the license actions check them. (The
    engine API counts for itself under its activation's lock.)"""

    quota: int
    machine_quota: int
    live_sessions: int
    unexpired_offline: int
    registered_machines: int
    licensed_users: int | None  # KSE only

    @property
    def used(self):
        """Licenses taken: KSE by licensed users, RE by live sessions; offline licenses for both."""
        held = self.licensed_users if self.licensed_users is not None else self.live_sessions
        return held + self.unexpired_offline

    @property
    def available(self):
        return max(0, self.quota - self.used)

    @property
    def over_quota(self):
        """Licenses held beyond the quota (only data from before lowering a KSE quota was refused)."""
        return max(0, self.used - self.quota)

    def kse_quota_refusal(self, quota, organization):
        """Why a KSE pool with these figures cannot have its quota lowered to `quota`, naming how many
        licensed users to revoke first; None when it can. Licensed users are the KSE quota, so a
        quota below them would leave them all licensed and the pool silently floating; offline
        licenses cannot be revoked at all."""
        held = self.licensed_users + self.unexpired_offline
        if quota >= held:
            return None
        offline = f" and {self.unexpired_offline} unexpired offline licenses" if self.unexpired_offline else ""
        holders = f"{self.licensed_users} licensed users{offline} hold {held} licenses"
        if held - quota <= self.licensed_users:
            return (
                f"The KSE quota of {organization} cannot go down to {quota}: {holders}. "
                f"Revoke {held - quota} licensed users first, then lower the quota."
            )
        return (
            f"The KSE quota of {organization} cannot go down to {quota}: {holders}, and offline licenses "
            f"cannot be revoked. With every licensed user revoked it can go down to {self.unexpired_offline}."
        )


class LicensePoolQuerySet(models.QuerySet):
    def for_org(self, organization):
        return self.filter(organization=organization)

    def lock_in_order(self):
        """Lock these pools in id order, the project's lock order for several pools (and never an
        organization's row after them); returns them. Call inside a transaction."""
        return list(self.select_for_update(of=("self",)).order_by("pk"))


def heartbeat_interval(lease_seconds):
    """How often an engine is asked to heartbeat a lease of `lease_seconds`: five chances to renew
    before it runs out, so a missed beat or two never costs a license."""
    return max(10, lease_seconds // 5)


class LicensePool(models.Model):
    """What an organization bought of one product. Every quota check locks this row first."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="pools")
    product = models.CharField(max_length=3, choices=Product.choices)
    quota = models.PositiveIntegerField(help_text="Concurrent online licenses (KSE: licensed users).")
    machine_quota = models.PositiveIntegerField(help_text="Registered machines.")
    starts_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    lease_seconds = models.PositiveIntegerField(
        default=DEFAULT_LEASE_SECONDS, help_text="How long a session lives without a heartbeat."
    )
    machine_idle_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Deregister machines idle this many days; empty keeps them."
    )
    machine_allow_list = models.TextField(
        blank=True,
        help_text="One machine-id pattern per line (* and ? wildcards). Empty allows every machine.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = LicensePoolQuerySet.as_manager()

    class Meta:
        ordering = ["organization", "product"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "product"], name="one_pool_per_product"),
            models.CheckConstraint(condition=Q(product__in=["KSE", "RE"]), name="pool_product_valid"),
            models.CheckConstraint(condition=Q(quota__gte=0), name="pool_quota_not_negative"),
            models.CheckConstraint(condition=Q(machine_quota__gte=0), name="pool_machine_quota_not_negative"),
            models.CheckConstraint(condition=Q(lease_seconds__gte=30), name="pool_lease_at_least_30s"),
            models.CheckConstraint(condition=Q(expires_at__gt=models.F("starts_at")), name="pool_ends_after_start"),
        ]

    def __str__(self):
        return f"{self.organization} {self.product}"

    @property
    def heartbeat_interval_seconds(self):
        return heartbeat_interval(self.lease_seconds)

    def allow_patterns(self):
        return [line.strip() for line in self.machine_allow_list.splitlines() if line.strip()]

    def allows_machine(self, machine_id):
        patterns = self.allow_patterns()
        return not patterns or any(fnmatch.fnmatchcase(machine_id, pattern) for pattern in patterns)

    def unlicensed_members(self, search=""):
        """Active members of the pool's organization without a license in it, whose name or email
        contains `search`, in natural order of name: who the "Assign licenses" chooser offers."""
        members = (
            Membership.objects.active()
            .for_org(self.organization_id)
            .exclude(models.Exists(LicensedUser.objects.active().filter(pool=self, user=models.OuterRef("user"))))
        )
        if search:
            members = members.filter(Q(user__name__icontains=search) | Q(user__email__icontains=search))
        return members.order_by("user__sort_key", "user__email", "user_id")

    def usage(self):
        """Counted now, against the database clock, in one query. Callers that enforce a limit lock
        the pool first."""

        counts = (
            LicensePool.objects.filter(pk=self.pk)
            .annotate(
                n_live_sessions=count_in_pool(self.sessions.model.objects.live()),
                n_unexpired_offline=count_in_pool(OfflineLicense.objects.unexpired()),
                n_registered_machines=count_in_pool(self.machines.model.objects.registered()),
                n_licensed_users=count_in_pool(LicensedUser.objects.active()),
            )
            .values("n_live_sessions", "n_unexpired_offline", "n_registered_machines", "n_licensed_users")
            .get()
        )
        return PoolUsage(
            quota=self.quota,
            machine_quota=self.machine_quota,
            live_sessions=counts["n_live_sessions"],
            unexpired_offline=counts["n_unexpired_offline"],
            registered_machines=counts["n_registered_machines"],
            licensed_users=counts["n_licensed_users"] if self.product == Product.KSE else None,
        )

    def is_in_force(self, now):
        """Whether the subscription runs at `now`, which callers read from the database's clock."""
        return self.starts_at <= now < self.expires_at

    @property
    def status(self):
        now = timezone.now()
        if now < self.starts_at:
            return "not started"
        if now >= self.expires_at:
            return "expired"
        return "active"


class LicensedUserQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)

    def for_org(self, organization):
        return self.filter(pool__organization=organization)


class LicensedUser(models.Model):
    """A KSE seat: the member may activate KSE. Revoked seats are kept for the record."""

    pool = models.ForeignKey(LicensePool, on_delete=models.CASCADE, related_name="licensed_users")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="kse_seats")
    granted_at = models.DateTimeField(default=timezone.now)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    objects = LicensedUserQuerySet.as_manager()

    class Meta:
        ordering = ["granted_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["pool", "user"], condition=Q(revoked_at__isnull=True), name="one_active_seat_per_user"
            ),
        ]

    def __str__(self):
        return f"{self.user} on {self.pool}"


def generate_license_id():
    return "ol_" + secrets.token_hex(8)


class OfflineLicenseQuerySet(models.QuerySet):
    def unexpired(self):
        return self.filter(expires_at__gt=Now())

    def for_org(self, organization):
        return self.filter(pool__organization=organization)


class OfflineLicense(models.Model):
    """A signed license file for one machine. It counts against the quota until it expires and
    cannot be revoked: the file works offline, so taking it back would be a lie."""

    license_id = models.CharField(max_length=32, unique=True, default=generate_license_id, editable=False)
    pool = models.ForeignKey(LicensePool, on_delete=models.CASCADE, related_name="offline_licenses")
    machine_id = models.CharField(max_length=128)
    issued_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    file_content = models.TextField(help_text="The signed .lic file, exactly as downloaded.")

    objects = OfflineLicenseQuerySet.as_manager()

    class Meta:
        ordering = ["-issued_at"]
        indexes = [models.Index(fields=["pool", "expires_at"], name="offline_pool_expiry")]

    def __str__(self):
        return f"{self.license_id} ({self.machine_id})"

    @property
    def is_expired(self):
        return self.expires_at <= timezone.now()

    @property
    def filename(self):
        return f"{self.pool.product}_{self.machine_id}.lic"


class SigningKey(models.Model):
    """The generated Ed25519 key, kept when LICENSE_SIGNING_KEY is not configured."""

    # One row only: two processes generating a key at once both insert slot 1 and the second
    # insert is dropped, so every process signs with the same key.
    slot = models.PositiveSmallIntegerField(default=1, unique=True, editable=False)
    private_key_pem = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(slot=1), name="one_signing_key")]

    def __str__(self):
        return f"Signing key of {self.created_at:%Y-%m-%d}"


class UsageHour(models.Model):
    """One finished hour of a pool's use, rolled up once from its sessions (licenses.usage explains
    why finished hours never change). Hours without sessions have no row."""

    pool = models.ForeignKey(LicensePool, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField(help_text="The hour's start, a whole UTC hour.")
    peak = models.PositiveIntegerField(help_text="The most sessions held at once during the hour.")
    held_at_start = models.PositiveIntegerField(help_text="Sessions begun before the hour and held past its start.")
    started = models.PositiveIntegerField(help_text="Sessions begun during the hour.")
    ended_before_start = models.PositiveIntegerField(
        help_text="Of those, how many were recorded as ending at or before the hour's start (a session "
        "ended by a transaction that began before the activation committed)."
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["pool", "hour"], name="one_usage_row_per_pool_hour")]

    def __str__(self):
        return f"{self.pool_id} {self.hour:%Y-%m-%d %H:00}: peak {self.peak}"


class UsageRollup(models.Model):
    """How far a pool's usage is rolled up into UsageHour rows, and what the next hours need to
    know of the hours before them: which sessions begun earlier still held a license then."""

    pool = models.OneToOneField(LicensePool, on_delete=models.CASCADE, primary_key=True, related_name="+")
    rolled_up_to = models.DateTimeField(help_text="Every hour before this one has its UsageHour row (or none).")
    held_sessions = models.JSONField(
        default=list, help_text="Ids of the sessions begun before rolled_up_to and held past it."
    )

    def __str__(self):
        return f"{self.pool_id} rolled up to {self.rolled_up_to:%Y-%m-%d %H:00}"
