"""Writes to license pools. Each action is one transaction that locks the pool row first, counts,
then writes, and records its audit event inside that transaction, so any number of web processes
can grant, end and provision at once without a limit ever being overstepped.

Lock order, everywhere: the Organization row before LicensePool rows, pools in id order; a pool
lock is never followed by an organization lock."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from organizations.audit import Action, record, record_each
from organizations.models import MANAGER_ROLES, Membership, Organization, User
from sessions_app.models import EndReason, EngineSession, Machine, QueueTicket, TicketOutcome

from . import signing
from .errors import (
    InvalidRequest,
    LicenseExpired,
    MachineNotAllowed,
    NotAllowed,
    SeatQuotaExceeded,
    SessionNotFound,
    SessionQuotaExceeded,
    TicketNotFound,
)
from .models import (
    DEFAULT_LEASE_SECONDS,
    LicensedUser,
    LicensePool,
    OfflineLicense,
    Product,
    default_expiry,
    is_valid_machine_id,
    pool_term_errors,
)


@dataclass(frozen=True)
class ProvisionResult:
    pool: LicensePool
    created: bool
    sessions_ended: int


def _lock_pool(pool_id: int) -> LicensePool:
    """The pool, locked, with the database's clock as `db_now`: every rule comparing with "now"
    reads that clock, as activation does, so no web host's clock decides a license."""
    # of=("self",): without it PostgreSQL locks the joined organization row too, taking it after the
    # pool and deadlocking with remove_member, which takes the organization first.
    return (
        LicensePool.objects.select_for_update(of=("self",))
        .select_related("organization")
        .annotate(db_now=Now())
        .get(pk=pool_id)
    )


def pool_terms(pool: LicensePool) -> dict:
    """A pool's terms as the audit log records them."""
    return {
        "quota": pool.quota,
        "machine_quota": pool.machine_quota,
        "starts_at": pool.starts_at.isoformat(),
        "expires_at": pool.expires_at.isoformat(),
        "lease_seconds": pool.lease_seconds,
        "machine_idle_days": pool.machine_idle_days,
        "machine_allow_list": pool.machine_allow_list,
    }


def _end_sessions_over_quota(pool: LicensePool) -> int:
    """End the newest live sessions until live sessions plus unexpired offline licenses fit the
    quota: the newest have done the least work, so ending them costs the least."""
    usage = pool.usage()
    excess = usage.live_sessions + usage.unexpired_offline - pool.quota
    if excess <= 0:
        return 0
    newest = list(pool.sessions.live().order_by("-started_at", "-id").values_list("pk", flat=True)[:excess])
    return EngineSession.objects.filter(pk__in=newest).end(EndReason.QUOTA_REDUCED)


@transaction.atomic
def provision_pool(
    *,
    organization: Organization,
    product: str,
    quota: int,
    machine_quota: int | None = None,
    starts_at: datetime | None = None,
    expires_at: datetime | None = None,
    lease_seconds: int | None = None,
    machine_idle_days: int | None = None,
    machine_allow_list: str | None = None,
    actor: User | None = None,
    ip_address: str | None = None,
) -> ProvisionResult:
    """Create the organization's pool for `product` or change its terms (a purchase or renewal).

    Arguments left as None keep a pool's current terms; a new pool gets the defaults: machine
    quota equal to the quota, starting now, running one year, 300-second leases, no machine idle
    limit. When changing, a machine quota that followed the quota keeps following it.
    `machine_idle_days=0` removes the idle limit. Lowering an RE quota below what is in use ends
    the newest live sessions with reason `quota_reduced`. A KSE quota cannot go below its licensed
    users plus unexpired offline licenses: SeatQuotaExceeded names how many to revoke first."""
    if product not in Product.values:
        raise InvalidRequest(
            f"Unknown product {product!r}: choose {' or '.join(Product.values)}.",
            details={"fields": {"product": ["Unknown product."]}},
        )
    Organization.objects.select_for_update().get(pk=organization.pk)
    pool = LicensePool.objects.select_for_update().filter(organization=organization, product=product).first()
    created = pool is None
    before = None if created else pool_terms(pool)
    if created:
        starts_at = starts_at or timezone.now()
        pool = LicensePool(
            organization=organization,
            product=product,
            quota=quota,
            machine_quota=quota if machine_quota is None else machine_quota,
            starts_at=starts_at,
            expires_at=expires_at or default_expiry(starts_at),
            lease_seconds=DEFAULT_LEASE_SECONDS if lease_seconds is None else lease_seconds,
            machine_idle_days=machine_idle_days or None,
            machine_allow_list=machine_allow_list or "",
        )
    else:
        if machine_quota is None:
            machine_quota = quota if pool.machine_quota == pool.quota else pool.machine_quota
        pool.quota = quota
        pool.machine_quota = machine_quota
        pool.starts_at = starts_at or pool.starts_at
        pool.expires_at = expires_at or pool.expires_at
        if lease_seconds is not None:
            pool.lease_seconds = lease_seconds
        if machine_idle_days is not None:
            pool.machine_idle_days = machine_idle_days or None
        if machine_allow_list is not None:
            pool.machine_allow_list = machine_allow_list
    errors = pool_term_errors(
        quota=pool.quota,
        machine_quota=pool.machine_quota,
        starts_at=pool.starts_at,
        expires_at=pool.expires_at,
        lease_seconds=pool.lease_seconds,
        machine_idle_days=machine_idle_days,
    )
    if errors:
        raise InvalidRequest(" ".join(errors.values()), details={"fields": {k: [v] for k, v in errors.items()}})
    if not created and pool.product == Product.KSE:
        # Counted under the pool's lock, so no grant slips in between this check and the save.
        usage = pool.usage()
        refusal = usage.kse_quota_refusal(pool.quota, organization)
        if refusal:
            raise SeatQuotaExceeded(
                refusal,
                details={
                    "fields": {"quota": [refusal]},
                    "licensed_users": usage.licensed_users,
                    "unexpired_offline": usage.unexpired_offline,
                },
            )
    pool.save()
    # KSE never ends sessions for its quota: the quota counts licensed users, kept within it above.
    sessions_ended = 0 if created or pool.product == Product.KSE else _end_sessions_over_quota(pool)
    record(
        organization=organization,
        actor=actor,
        action=Action.POOL_PROVISIONED,
        target=pool,
        before=before,
        after=pool_terms(pool) | {"sessions_ended": sessions_ended},
        ip_address=ip_address,
    )
    return ProvisionResult(pool=pool, created=created, sessions_ended=sessions_ended)


def _refuse_unless_manager(pool: LicensePool, actor: User | None) -> None:
    """The pages check the role too, but every caller of these actions must be held to it. Read
    under the pool lock, so a role taken away a moment ago is seen. `actor=None` is the installation
    itself (an operator's command), which no organization role constrains, nor a superuser's."""
    if actor is None or actor.is_superuser:
        return
    if not (
        Membership.objects.active()
        .filter(organization_id=pool.organization_id, user=actor, role__in=MANAGER_ROLES)
        .exists()
    ):
        raise NotAllowed(f"Only owners and admins of {pool.organization} manage its licenses.")


def _lock_pool_managed_by(actor: User | None, pool_id: int, organization: Organization, not_found) -> LicensePool:
    """The pool of something a page names, locked, once it is known to be `organization`'s (else
    `not_found`, so another organization's objects look like none) and `actor` manages it."""
    pool = _lock_pool(pool_id)
    if pool.organization_id != organization.pk:
        raise not_found
    _refuse_unless_manager(pool, actor)
    return pool


def _refuse_unless_in_force(pool: LicensePool) -> None:
    """`pool` comes from _lock_pool, with the database's clock."""
    if not pool.is_in_force(pool.db_now):
        when = "has not started yet" if pool.db_now < pool.starts_at else "has ended"
        raise LicenseExpired(
            f"The {pool.get_product_display()} subscription of {pool.organization} {when} "
            f"(it runs from {pool.starts_at:%Y-%m-%d} to {pool.expires_at:%Y-%m-%d})."
        )


def grant_licenses(
    *, pool: LicensePool, users: Iterable[User], actor: User | None, ip_address: str | None = None
) -> list[LicensedUser]:
    """Make members licensed users of a KSE pool, all or none. Members who already hold a license
    are left as they are (a repeated or concurrent grant is not an error); returns the new seats.
    A grant refused for the quota is audited: owners learn from it that they ran out."""
    try:
        return _grant_licenses(pool=pool, users=users, actor=actor, ip_address=ip_address)
    except SeatQuotaExceeded as refusal:
        _record_grant_refusal(pool, refusal, actor=actor, ip_address=ip_address)
        raise


@transaction.atomic
def _record_grant_refusal(pool: LicensePool, refusal: SeatQuotaExceeded, *, actor, ip_address) -> None:
    # The grant's own transaction has rolled back, so the refusal is written in one of its own.
    record(
        organization=pool.organization,
        actor=actor,
        action=Action.LICENSE_GRANT_REFUSED,
        target=pool,
        target_label=f"{pool.product} licenses",
        after={"code": refusal.code, "message": refusal.message, "details": refusal.details},
        ip_address=ip_address,
    )


@transaction.atomic
def _grant_licenses(*, pool, users, actor, ip_address):
    pool = _lock_pool(pool.pk)
    _refuse_unless_manager(pool, actor)
    if pool.product != Product.KSE:
        raise InvalidRequest("Licenses are assigned to people only for Katalon Studio Enterprise.")
    _refuse_unless_in_force(pool)
    wanted = {user.pk: user for user in users}
    if not wanted:
        raise InvalidRequest("Choose at least one member.", details={"fields": {"users": ["Choose a member."]}})
    members = set(
        Membership.objects.active().for_org(pool.organization).filter(user__in=wanted).values_list("user", flat=True)
    )
    outsiders = [user for pk, user in wanted.items() if pk not in members]
    if outsiders:
        names = ", ".join(sorted(user.display_name for user in outsiders))
        raise InvalidRequest(
            f"Only members of {pool.organization} can be licensed: {names} is not a member.",
            details={"fields": {"users": ["Not a member."]}},
        )
    already = set(pool.licensed_users.active().filter(user__in=wanted).values_list("user", flat=True))
    new_users = [user for pk, user in wanted.items() if pk not in already]
    if not new_users:
        return []
    usage = pool.usage()
    if usage.used + len(new_users) > pool.quota:
        if usage.available == 0:
            message = f"{usage.used} of {pool.quota} licenses are assigned in {pool.organization}; revoke one first."
        else:
            message = (
                f"Only {usage.available} of {pool.quota} licenses are available in {pool.organization}; "
                f"you chose {len(new_users)} members."
            )
        raise SeatQuotaExceeded(message, details={"quota": pool.quota, "used": usage.used, "requested": len(new_users)})
    now = pool.db_now
    seats = LicensedUser.objects.bulk_create(
        [LicensedUser(pool=pool, user=user, granted_at=now, granted_by=actor) for user in new_users]
    )
    record_each(
        seats,
        organization=pool.organization,
        actor=actor,
        action=Action.LICENSE_GRANTED,
        describe=lambda seat: {"target_label": f"{seat.user.email} ({pool.product})"},
        ip_address=ip_address,
    )
    return seats


@transaction.atomic
def revoke_licenses(
    *, pool: LicensePool, users: Iterable[User], actor: User | None, ip_address: str | None = None
) -> list[LicensedUser]:
    """Withdraw these people's licenses in the pool and end their live sessions in it (reason
    `withdrawn`). People without a license are skipped; returns the revoked seats."""
    pool = _lock_pool(pool.pk)
    _refuse_unless_manager(pool, actor)
    user_ids = {user.pk for user in users}
    seats = list(pool.licensed_users.active().filter(user__in=user_ids).select_related("user"))
    if not seats:
        return []
    now = pool.db_now
    LicensedUser.objects.filter(pk__in=[seat.pk for seat in seats]).update(revoked_at=now, revoked_by=actor)
    EngineSession.objects.filter(pool=pool, user__in=[seat.user_id for seat in seats]).end(EndReason.WITHDRAWN)
    for seat in seats:
        seat.revoked_at, seat.revoked_by = now, actor
    record_each(
        seats,
        organization=pool.organization,
        actor=actor,
        action=Action.LICENSE_REVOKED,
        describe=lambda seat: {"target_label": f"{seat.user.email} ({pool.product})"},
        ip_address=ip_address,
    )
    return seats


def revoke_seats_of_removed_member(sender, *, organization: Organization, user: User, actor, now, **kwargs) -> dict:
    """organizations.signals.member_removed: the person's KSE seats in that organization are
    revoked. Their pools are locked first, in id order, as every activation locks its pool: no
    session can start for them half-way through the removal."""
    LicensePool.objects.for_org(organization).lock_in_order()
    seats = (
        LicensedUser.objects.active().for_org(organization).filter(user=user).update(revoked_at=now, revoked_by=actor)
    )
    return {"kse_seats_revoked": seats}


@transaction.atomic
def withdraw_session(
    *, organization: Organization, session: EngineSession, actor: User | None, ip_address: str | None = None
) -> bool:
    """An admin ends one live session (reason `withdrawn`), freeing its license at once. Returns
    False when the session had already ended or lapsed."""
    pool = _lock_pool_managed_by(
        actor, session.pool_id, organization, SessionNotFound("That session does not belong to this organization.")
    )
    if not pool.sessions.live().filter(pk=session.pk).exists():
        return False
    EngineSession.objects.filter(pk=session.pk).end(EndReason.WITHDRAWN)
    record(
        organization=organization,
        actor=actor,
        action=Action.SESSION_ENDED,
        target=session,
        target_label=f"{session.public_id} on {session.machine.machine_id} ({pool.product})",
        after={"reason": EndReason.WITHDRAWN},
        ip_address=ip_address,
    )
    return True


@transaction.atomic
def remove_ticket(
    *, organization: Organization, ticket: QueueTicket, actor: User | None, ip_address: str | None = None
) -> bool:
    """An admin takes a waiting engine out of the pool's line (its next poll answers 404); the
    tickets behind it move up at once. Under the pool's lock, so it cannot cross a poll that is
    granting the ticket a license. Returns False when the ticket was no longer waiting."""
    pool = _lock_pool_managed_by(
        actor, ticket.pool_id, organization, TicketNotFound("That ticket is not in a line of this organization.")
    )
    if not QueueTicket.objects.filter(pk=ticket.pk).waiting().end(TicketOutcome.REMOVED):
        return False
    record(
        organization=organization,
        actor=actor,
        action=Action.QUEUE_TICKET_REMOVED,
        target=ticket,
        target_label=f"{ticket.machine_id} of {ticket.user.email} ({pool.product})",
        before={"status": "waiting", "joined_at": ticket.joined_at.isoformat()},
        after={"status": "removed"},
        ip_address=ip_address,
    )
    return True


@transaction.atomic
def deactivate_machine(*, machine: Machine, actor: User | None, ip_address: str | None = None) -> bool:
    """End the machine's live sessions (reason `machine_deactivated`) and deregister it, freeing
    its machine slot. Returns False when it was no longer registered."""
    pool = _lock_pool(machine.pool_id)
    _refuse_unless_manager(pool, actor)
    if not Machine.objects.filter(pk=machine.pk).registered().exists():
        return False
    # Deregistered before its sessions end: ending an ephemeral machine's last session would
    # otherwise deregister it first, recording "ephemeral" instead of what happened.
    Machine.objects.filter(pk=machine.pk).deactivate("deactivated")
    sessions_ended = EngineSession.objects.filter(machine=machine).end(EndReason.MACHINE_DEACTIVATED)
    record(
        organization=pool.organization,
        actor=actor,
        action=Action.MACHINE_DEACTIVATED,
        target=machine,
        target_label=f"{machine.machine_id} ({pool.product})",
        after={"sessions_ended": sessions_ended},
        ip_address=ip_address,
    )
    return True


@transaction.atomic
def create_offline_license(
    *, pool: LicensePool, machine_id: str, expires_at: datetime, actor: User | None, ip_address: str | None = None
) -> OfflineLicense:
    """Issue a signed offline license for one machine. It takes one license until it expires,
    which is at the latest when the subscription ends."""
    if not is_valid_machine_id(machine_id):
        raise InvalidRequest(
            "The machine id must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'.",
            details={"fields": {"machine_id": ["Invalid machine id."]}},
        )
    pool = _lock_pool(pool.pk)
    _refuse_unless_manager(pool, actor)
    _refuse_unless_in_force(pool)
    now = pool.db_now
    if expires_at <= now:
        raise InvalidRequest(
            "An offline license must expire in the future.", details={"fields": {"expires_at": ["In the past."]}}
        )
    if expires_at > pool.expires_at:
        raise InvalidRequest(
            f"An offline license cannot outlast the subscription, which ends on {pool.expires_at:%Y-%m-%d %H:%M} UTC.",
            details={"fields": {"expires_at": ["After the subscription ends."]}},
        )
    if not pool.allows_machine(machine_id):
        raise MachineNotAllowed(f"The machine id {machine_id} is not on the {pool.product} pool's allow-list.")
    usage = pool.usage()
    if usage.available == 0:
        taken = "licensed users" if pool.product == Product.KSE else "live sessions"
        held = usage.licensed_users if pool.product == Product.KSE else usage.live_sessions
        raise SessionQuotaExceeded(
            f"No license is available in {pool.organization}: {usage.used} of {pool.quota} are taken "
            f"({held} {taken}, {usage.unexpired_offline} offline licenses).",
            details={"quota": pool.quota, "used": usage.used},
        )
    offline = OfflineLicense(pool=pool, machine_id=machine_id, issued_at=now, expires_at=expires_at, issued_by=actor)
    offline.file_content = signing.sign_license_file(
        {
            "license_id": offline.license_id,
            "organization": {"id": pool.organization.public_id, "name": pool.organization.name},
            "product": pool.product,
            "machine_id": machine_id,
            "issued_at": signing.iso_utc(now),
            "expires_at": signing.iso_utc(expires_at),
        }
    )
    offline.save()
    record(
        organization=pool.organization,
        actor=actor,
        action=Action.OFFLINE_LICENSE_CREATED,
        target=offline,
        target_label=f"{machine_id} ({pool.product}) until {expires_at:%Y-%m-%d}",
        ip_address=ip_address,
    )
    return offline
