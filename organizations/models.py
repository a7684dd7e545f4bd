import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import IntegrityError, models, transaction
from django.db.models import Case, Exists, F, OuterRef, Q, Subquery, When
from django.db.models.functions import Lower, Now
from django.urls import reverse
from django.utils import timezone

INVITATION_LIFETIME = timedelta(days=7)
# How much later than its end a session's last heartbeat can be recorded: a heartbeat and an end that
# race commit one after the other, each with its own transaction's clock.
HEARTBEAT_AFTER_END = timedelta(minutes=15)


SORT_KEY_LENGTH = 255
DIGIT_RUN = re.compile(r"\d+")


def natural_sort_key(text):
    """A key that sorts "Member 2" before "Member 10" under plain string comparison, in every
    database: case folded, and each run of digits prefixed with its length (two digits), so a
    shorter number sorts first and numbers of one length compare digit by digit. Leading zeros
    are dropped, so "07" sorts as 7."""

    def number(match):
        digits = match.group().lstrip("0") or "0"
        return f"{min(len(digits), 99):02d}{digits}"

    return DIGIT_RUN.sub(number, text.casefold())[:SORT_KEY_LENGTH]


class UserManager(BaseUserManager):
    use_in_migrations = True

    def bulk_create(self, objs, *args, **kwargs):
        # bulk_create skips save(): fill the sort key here, so seeded and imported people sort too.
        objs = list(objs)
        for user in objs:
            user.sort_key = user.natural_sort_key()
        return super().bulk_create(objs, *args, **kwargs)

    def create_user(self, email, password=None, **extra_fields):
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email, password=None, **extra_fields):
        extra_fields.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra_fields)

    def get_by_natural_key(self, email):
        return self.get(email__iexact=email)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. People sign in with their email address; the name is what pages show."""

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="Operators may use the admin site.")
    date_joined = models.DateTimeField(default=timezone.now)
    # What lists of people order by: the display name as natural_sort_key makes it (filled on save),
    # so "Member 2" comes before "Member 10" on every page without sorting in Python.
    sort_key = models.CharField(max_length=SORT_KEY_LENGTH, blank=True, editable=False, db_index=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = []

    class Meta:
        constraints = [models.UniqueConstraint(Lower("email"), name="user_email_ci_unique")]

    def __str__(self):
        return self.display_name

    def save(self, *args, **kwargs):
        self.sort_key = self.natural_sort_key()
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and {"name", "email"} & set(update_fields):
            kwargs["update_fields"] = {*update_fields, "sort_key"}
        super().save(*args, **kwargs)

    def clean(self):
        super().clean()
        self.email = self.__class__.objects.normalize_email(self.email).lower()

    def natural_sort_key(self):
        return natural_sort_key(self.display_name)

    @property
    def display_name(self):
        return self.name or self.email

    def get_full_name(self):
        return self.display_name

    def get_short_name(self):
        return self.display_name


def generate_public_id():
    # Engines carry this as -orgID; digits only, like Katalon's, and long enough that guessing
    # one is pointless (membership is checked anyway).
    return str(1_000_000_000 + secrets.randbelow(9_000_000_000))


class OrganizationQuerySet(models.QuerySet):
    def for_user(self, user):
        return self.filter(memberships__user=user, memberships__removed_at__isnull=True)


class Organization(models.Model):
    public_id = models.CharField(max_length=20, unique=True, default=generate_public_id, editable=False)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = OrganizationQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        # A random id can collide; retry with a fresh one instead of failing the caller.
        if self._state.adding:
            for _ in range(5):
                try:
                    with transaction.atomic():
                        return super().save(*args, **kwargs)
                except IntegrityError:
                    if Organization.objects.filter(public_id=self.public_id).exists():
                        self.public_id = generate_public_id()
                        continue
                    raise
        return super().save(*args, **kwargs)


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


MANAGER_ROLES = (Role.OWNER, Role.ADMIN)


class MembershipQuerySet(models.QuerySet):
    def active(self):
        return self.filter(removed_at__isnull=True)

    def removed(self):
        return self.filter(removed_at__isnull=False)

    def for_org(self, organization):
        return self.filter(organization=organization)

    def with_activity(self, organization):
        """Annotate what the members page shows per person, in this query rather than one per row:
        `has_kse_seat` (an active KSE seat in this organization) and `last_heartbeat_at` (their
        latest engine heartbeat in this organization's pools)."""
        # Imported here: those apps' models import this module.
        from licenses.models import LicensedUser
        from sessions_app.models import EngineSession

        # The latest heartbeat without reading all of a person's sessions (a CI account may have a
        # million): a session does not heartbeat after it ends (a heartbeat racing the end can land
        # a transaction's wait later, far less than HEARTBEAT_AFTER_END), so the one with the latest
        # heartbeat is open, or ended no earlier than that slack before the last heartbeat of the
        # session that ended last. Both are short ranges of the (user, ended_at) index.
        sessions = EngineSession.objects.for_org(organization)
        last_ended_heartbeat = (
            sessions.filter(user=OuterRef(OuterRef("user_id")), ended_at__isnull=False)
            .order_by("-ended_at")
            .annotate(bound=F("last_heartbeat_at") - HEARTBEAT_AFTER_END)
            .values("bound")[:1]
        )
        latest_heartbeat = (
            sessions.filter(user=OuterRef("user_id"))
            .filter(Q(ended_at__isnull=True) | Q(ended_at__gte=Subquery(last_ended_heartbeat)))
            .order_by("-last_heartbeat_at")
            .values("last_heartbeat_at")[:1]
        )
        return self.select_related("user", "removed_by").annotate(
            has_kse_seat=Exists(LicensedUser.objects.active().for_org(organization).filter(user=OuterRef("user_id"))),
            last_heartbeat_at=Subquery(latest_heartbeat),
        )

    def by_rank(self):
        """Owner first, then admins, then members; by name within a role, in natural order."""
        rank = Case(When(role=Role.OWNER, then=0), When(role=Role.ADMIN, then=1), default=2)
        return self.order_by(rank, "user__sort_key", "user__email")


class Membership(models.Model):
    """A person's place in an organization. Removed memberships are kept for the removed list."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    joined_at = models.DateTimeField(default=timezone.now)
    removed_at = models.DateTimeField(null=True, blank=True)
    removed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    objects = MembershipQuerySet.as_manager()

    class Meta:
        ordering = ["joined_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "user"],
                condition=Q(removed_at__isnull=True),
                name="one_active_membership_per_user",
            ),
            # At most one owner; the actions make it exactly one (transfer demotes, then promotes).
            models.UniqueConstraint(
                fields=["organization"],
                condition=Q(role="owner", removed_at__isnull=True),
                name="one_owner_per_organization",
            ),
            models.CheckConstraint(condition=Q(role__in=["owner", "admin", "member"]), name="membership_role_valid"),
            models.CheckConstraint(
                condition=~Q(role="owner") | Q(removed_at__isnull=True), name="owner_is_never_removed"
            ),
        ]

    def __str__(self):
        return f"{self.user} in {self.organization} ({self.get_role_display()})"

    @property
    def is_active(self):
        return self.removed_at is None

    @property
    def can_manage(self):
        return self.is_active and self.role in MANAGER_ROLES

    @property
    def is_owner(self):
        return self.is_active and self.role == Role.OWNER

    @property
    def last_seen(self):
        """The later of the last sign-in and the last engine heartbeat in this organization; the
        heartbeat comes from the members page's annotation (`last_heartbeat_at`) when present."""
        seen = [self.user.last_login, getattr(self, "last_heartbeat_at", None)]
        return max((moment for moment in seen if moment is not None), default=None)


def generate_invitation_token():
    return secrets.token_urlsafe(32)


def default_invitation_expiry():
    return timezone.now() + INVITATION_LIFETIME


class InvitationQuerySet(models.QuerySet):
    def pending(self):
        return self.filter(accepted_at__isnull=True, revoked_at__isnull=True)

    def usable(self):
        return self.pending().filter(expires_at__gt=Now())


class Invitation(models.Model):
    """An offer to join; the token in its link is single-use and expires."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    token = models.CharField(max_length=64, unique=True, default=generate_invitation_token, editable=False)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(default=default_invitation_expiry)
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                "organization",
                Lower("email"),
                condition=Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="one_pending_invitation_per_email",
            ),
            models.CheckConstraint(condition=~Q(role="owner"), name="invitation_never_makes_owner"),
        ]

    def __str__(self):
        return f"Invitation of {self.email} to {self.organization}"

    def get_absolute_url(self):
        return reverse("accept_invitation", args=[self.token])

    @property
    def is_expired(self):
        return self.expires_at <= timezone.now()

    @property
    def is_pending(self):
        return self.accepted_at is None and self.revoked_at is None


class AuditEventQuerySet(models.QuerySet):
    def for_org(self, organization):
        return self.filter(organization=organization)


class AuditEvent(models.Model):
    """One thing somebody did. Written in the transaction of the change it records; never edited."""

    organization = models.ForeignKey(
        Organization,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="audit_events",
        db_index=False,  # audit_org_time_id leads with it
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Kept beside the foreign key so the log still reads right after an account is deleted.
    actor_label = models.CharField(max_length=254, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=300, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The audit log's page, count and date filters: one organization's events in the page's
            # order, newest first, ties by id, so a page is read straight off the index.
            models.Index(fields=["organization", "-created_at", "-id"], name="audit_org_time_id"),
            # On PostgreSQL the "who" filter (actor_label contains) also has a trigram index, made in
            # migration 0002 because SQLite has no such index.
        ]

    def __str__(self):
        return f"{self.actor_label or 'system'} {self.action} {self.target_label}"
