"""Writes to machines, engine sessions and API keys.

Every activation locks its LicensePool row before counting, so concurrent activations against one
pool queue on that row (from any number of web processes) and the counts they see are exact. Lock
order follows the project's rule: an organization row (never taken here) before pool rows.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import BooleanField, Case, Exists, ExpressionWrapper, OuterRef, Q, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from licenses import errors
from licenses.models import LicensePool, Product
from organizations.audit import Action, record
from organizations.models import Membership, Organization

from . import hotpath
from . import queue as queue_rules
from .models import (
    MACHINE_SEEN_RESOLUTION,
    ApiKey,
    EndReason,
    EngineSession,
    IdempotencyRecord,
    Machine,
    QueueTicket,
    TicketOutcome,
    hash_api_key,
)

IDEMPOTENCY_RETENTION = timedelta(hours=48)
# Claims now commit only with their answer (claim_idempotency_key). One committed without an answer,
# by a release that committed claims apart from their decision, is taken over once this old.
IDEMPOTENCY_CLAIM_TIMEOUT = timedelta(minutes=2)


@dataclass(frozen=True)
class Activation:
    """A granted activation, with the pool's figures as they stand after it."""

    session: EngineSession
    pool: LicensePool
    machine: Machine
    licenses_used: int  # against the quota: RE live sessions, KSE licensed users; offline licenses for both
    machines_used: int


def _lock_pools(chosen_id, *, ending=None):
    """Lock the pool an activation counts against and, for release_previous, every pool holding one
    of the sessions it ends (`ending`): in one statement, in id order (the project's lock order for
    several pools; no organization row is locked here, nor ever after a pool). Returns the chosen
    pool, with the database's clock as `db_now`, and the ids of every pool locked."""
    # of=("self",): the joined organization row must stay unlocked (see licenses.actions._lock_pool).
    pools = LicensePool.objects.select_for_update(of=("self",)).select_related("organization").annotate(db_now=Now())
    if ending is None:
        pool = pools.get(pk=chosen_id)
        return pool, {pool.pk}
    locked = list(pools.filter(Q(pk=chosen_id) | Q(pk__in=ending.values("pool_id"))).order_by("pk"))
    return next(pool for pool in locked if pool.pk == chosen_id), {pool.pk for pool in locked}


def _choose_pool(*, api_key, user, product, org_id):
    """The pool this activation counts against, by the contract's `org_id` rules. Read only: the
    caller locks the row it returns."""
    memberships = Membership.objects.active().filter(user=user)
    if api_key is not None and api_key.organization_id is not None:
        # A key restricted to one organization cannot be pointed at another; naming another looks
        # the same as naming one the person does not belong to.
        memberships = memberships.filter(organization_id=api_key.organization_id)
    if org_id:
        organization = Organization.objects.filter(public_id=org_id, memberships__in=memberships).first()
        if organization is None:
            raise errors.OrganizationNotFound(
                f"No organization with id {org_id} is available to this API key.", details={"org_id": org_id}
            )
        pool = LicensePool.objects.filter(organization=organization, product=product).first()
        if pool is None:
            raise errors.NoLicensePool(
                f"{organization.name} has no {Product(product).label} licenses.",
                details={"organization": {"id": organization.public_id, "name": organization.name}},
            )
        return pool
    pools = list(
        LicensePool.objects.filter(organization__memberships__in=memberships, product=product)
        .select_related("organization")
        .order_by("organization__name", "pk")
    )
    if len(pools) == 1:
        return pools[0]
    if len(pools) > 1:
        raise errors.OrganizationRequired(
            f"You belong to several organizations with {Product(product).label} licenses; "
            "choose one with org_id (-orgID).",
            details={"organizations": [{"id": p.organization.public_id, "name": p.organization.name} for p in pools]},
        )
    if not memberships.exists():
        raise errors.OrganizationNotFound("This API key's user is not a member of any organization.")
    raise errors.NoLicensePool(f"None of your organizations has {Product(product).label} licenses.")


@dataclass(frozen=True)
class _Engine:
    """Who asks for a license and on which machine: what a session (or a ticket) is made of."""

    user: object
    machine_id: str
    hostname: str
    engine_version: str
    ephemeral: bool


def _activate_locked(
    *,
    api_key,
    user,
    product,
    machine_id,
    org_id,
    hostname,
    engine_version,
    release_previous,
    ephemeral,
    queue,
    ticket,
    max_wait_seconds,
    ip_address,
    on_granted,
    on_queued,
):
    chosen = _choose_pool(api_key=api_key, user=user, product=product, org_id=org_id)
    previous = None
    if release_previous:
        previous = EngineSession.objects.filter(
            user=user, pool__product=product, machine__machine_id=machine_id, ended_at__isnull=True
        )
        if api_key is not None and api_key.organization_id is not None:
            # A key restricted to one organization acts in no other, here as in heartbeat and release.
            previous = previous.filter(pool__organization_id=api_key.organization_id)
    engine = _Engine(user, machine_id, hostname, engine_version, ephemeral)
    with transaction.atomic():
        pool, locked_pool_ids = _lock_pools(chosen.pk, ending=previous)
        _refuse_unless_may_activate(pool, user=user, product=product, machine_id=machine_id)
        if previous is not None:
            # Only in pools this transaction holds; a session another pool gained since the lock
            # statement read them is as if it came after this activation.
            previous.filter(pool_id__in=locked_pool_ids).end(EndReason.RELEASED)
        if product == Product.KSE:
            return _activate_kse(pool, engine, ticket=ticket, on_granted=on_granted)
        return _activate_re(
            pool,
            engine,
            queue=queue,
            ticket=ticket,
            max_wait_seconds=max_wait_seconds,
            ip_address=ip_address,
            on_granted=on_granted,
            on_queued=on_queued,
        )


def _refuse_unless_may_activate(pool, *, user, product, machine_id):
    now = pool.db_now
    # Membership was read before the lock; removing a member may have committed since.
    if not Membership.objects.active().filter(user=user, organization_id=pool.organization_id).exists():
        raise errors.OrganizationNotFound("This API key's user is not a member of that organization.")
    if not pool.is_in_force(now):
        state = "has not started yet" if now < pool.starts_at else "has ended"
        raise errors.LicenseExpired(
            f"The {Product(pool.product).label} subscription of {pool.organization.name} {state} "
            f"(runs {pool.starts_at:%Y-%m-%d} to {pool.expires_at:%Y-%m-%d}).",
            details={"starts_at": iso(pool.starts_at), "expires_at": iso(pool.expires_at)},
        )
    if product == Product.KSE and not pool.licensed_users.active().filter(user=user).exists():
        raise errors.NotLicensed(
            f"You are not a licensed user of {pool.organization.name}'s Katalon Studio Enterprise licenses. "
            "Ask an owner or admin to grant you one."
        )
    if not pool.allows_machine(machine_id):
        raise errors.MachineNotAllowed(
            f"Machine {machine_id} is not on the machine allow-list of {pool.organization.name}'s "
            f"{Product(pool.product).label} licenses."
        )


def _activate_kse(pool, engine, *, ticket, on_granted):
    # KSE never queues (a licensed user is never refused for quota): `queue` is ignored, and no KSE
    # ticket exists to poll.
    if ticket is not None:
        raise errors.TicketNotFound(
            f"Ticket {ticket} is not waiting in any line: Katalon Studio Enterprise licenses are never queued.",
            details={"ticket": ticket},
        )
    machine = pool.machines.registered().filter(machine_id=engine.machine_id).first()
    _end_earlier_kse_session(pool, engine.user, machine)
    if machine is not None and machine.ephemeral and not pool.machines.registered().filter(pk=machine.pk).exists():
        # The earlier session was the last on this ephemeral machine, so ending it deregistered the
        # machine: the new session registers it again, within the machine quota, instead of running
        # on a deregistered machine that no quota counts.
        machine = None
    # The KSE quota counts licensed users (and offline licenses), never sessions: granting keeps
    # those within it, so a licensed user is never refused here for quota.
    licenses_used = pool.licensed_users.active().count() + pool.offline_licenses.unexpired().count()
    registered = _refuse_unless_machine_slot(pool, engine.machine_id) if machine is None else None
    activation = _grant(pool, engine, machine=machine, registered=registered, licenses_used=licenses_used)
    if on_granted is not None:
        on_granted(activation)
    return activation


def _activate_re(pool, engine, *, queue, ticket, max_wait_seconds, ip_address, on_granted, on_queued):
    """RE: the session quota, and the line (queue.py) when engines wait or this one asks to."""
    counts = queue_rules.count_pool(pool)
    waiting_ticket = None
    if ticket is not None:
        waiting_ticket = queue_rules.ticket_for_poll(
            pool, user=engine.user, machine_id=engine.machine_id, ticket_id=ticket, now=counts.now
        )
        if waiting_ticket.expires_at <= counts.now:
            raise queue_rules.wait_over(pool, waiting_ticket, counts)
    may_take = queue_rules.may_take_license(counts, waiting_ticket)
    if not may_take and not (queue or waiting_ticket is not None):
        raise queue_rules.newcomer_refusal(pool, counts)
    # A request that would wait checks the machine quota before the session quota (the contract):
    # nobody waits in line for a license they could not take when their turn came.
    machine = pool.machines.registered().filter(machine_id=engine.machine_id).first()
    registered = _refuse_unless_machine_slot(pool, engine.machine_id) if machine is None else None
    if not may_take:
        if waiting_ticket is not None:
            queued = queue_rules.keep_waiting(pool, counts, waiting_ticket, hostname=engine.hostname)
        else:
            queued = queue_rules.join(
                pool,
                counts,
                user=engine.user,
                machine_id=engine.machine_id,
                hostname=engine.hostname,
                max_wait_seconds=max_wait_seconds,
                ip_address=ip_address,
            )
        if on_queued is not None:
            on_queued(queued)
        return queued
    activation = _grant(
        pool, engine, machine=machine, registered=registered, licenses_used=counts.live + counts.offline + 1
    )
    if waiting_ticket is not None:
        queue_rules.granted(waiting_ticket, activation.session, counts.now)
    if on_granted is not None:
        on_granted(activation)
    return activation


def _refuse_unless_machine_slot(pool, machine_id):
    """For a machine not registered with the pool: refuse if the machine quota is full, else return
    how many machines are registered."""
    # Lapsed leases end first, moving their machines' last_seen_at to now: a machine whose engine
    # heartbeated a minute ago is never taken for idle, and a killed ephemeral container's machine is
    # as gone as one that released, before expire_sessions runs.
    pool.sessions.lapsed().end(EndReason.EXPIRED)
    Machine.objects.idle_for_pool(pool).deactivate("idle")
    registered = pool.machines.registered().count()
    if registered >= pool.machine_quota:
        raise errors.MachineQuotaExceeded(
            f"Machine quota exceeded: {registered} of {pool.machine_quota} machines are registered with "
            f"{pool.organization.name}'s {Product(pool.product).label} licenses, and {machine_id} is not "
            "one of them. Ask an admin to deactivate a machine.",
            details={"machine_quota": pool.machine_quota, "registered_machines": registered},
        )
    return registered


def _grant(pool, engine, *, machine, registered, licenses_used):
    """The engine's session, on its machine: registered now if `machine` is None (`registered` then
    counts the pool's machines before it)."""
    now = pool.db_now
    if machine is None:
        machine = Machine.objects.create(
            pool=pool,
            machine_id=engine.machine_id,
            hostname=engine.hostname,
            user=engine.user,
            ephemeral=engine.ephemeral,
            registered_at=now,
            last_seen_at=now,
        )
        registered += 1
    else:
        Machine.objects.filter(pk=machine.pk).update(
            hostname=engine.hostname or machine.hostname, user=engine.user, ephemeral=engine.ephemeral, last_seen_at=now
        )
        machine.ephemeral = engine.ephemeral
        registered = pool.machines.registered().count()

    session = EngineSession.objects.create(
        pool=pool,
        machine=machine,
        user=engine.user,
        hostname=engine.hostname,
        engine_version=engine.engine_version,
        started_at=now,
        last_heartbeat_at=now,
        lease_expires_at=now + timedelta(seconds=pool.lease_seconds),
    )
    return Activation(
        session=session, pool=pool, machine=machine, licenses_used=licenses_used, machines_used=registered
    )


def _end_earlier_kse_session(pool, user, machine):
    """KSE: one licensed user, one session. Their open session in this pool ends: on this machine
    (a restarted or crashed Studio activating again) as released, on another as signed_in_elsewhere."""
    reason = EndReason.SIGNED_IN_ELSEWHERE
    if machine is not None:
        reason = Case(When(machine=machine, then=Value(EndReason.RELEASED)), default=Value(reason))
    EngineSession.objects.filter(pool=pool, user=user).end(reason)


def activate(
    *,
    api_key: ApiKey | None,
    user,
    product: str,
    machine_id: str,
    org_id: str | None = None,
    hostname: str = "",
    engine_version: str = "",
    release_previous: bool = False,
    ephemeral: bool = False,
    queue: bool = False,
    ticket: str | None = None,
    max_wait_seconds: int = queue_rules.DEFAULT_MAX_WAIT_SECONDS,
    ip_address: str | None = None,
    on_granted: Callable[[Activation], None] | None = None,
    on_queued: Callable[[queue_rules.Queued], None] | None = None,
) -> Activation | queue_rules.Queued:
    """Take one online license for one engine process, or raise the LicenseRefusal that says why not.

    RE only: with `queue`, a request that only the session quota stands in the way of waits in the
    pool's line and gets a Queued (the 202); polling with its `ticket` is the same call again
    (queue.py has the rules).

    `on_granted` and `on_queued` run inside the activation's transaction, so whatever they write
    (the stored answer to an Idempotency-Key) commits or rolls back together with the session or
    ticket.
    """
    try:
        return _activate_locked(
            api_key=api_key,
            user=user,
            product=product,
            machine_id=machine_id,
            org_id=org_id,
            hostname=hostname,
            engine_version=engine_version,
            release_previous=release_previous,
            ephemeral=ephemeral,
            queue=queue,
            ticket=ticket,
            max_wait_seconds=max_wait_seconds,
            ip_address=ip_address,
            on_granted=on_granted,
            on_queued=on_queued,
        )
    except errors.LicenseRefusal as refusal:
        # The activation's transaction has rolled back; the refusal is still worth knowing about.
        _record_refusal(
            refusal,
            api_key=api_key,
            user=user,
            product=product,
            machine_id=machine_id,
            org_id=org_id,
            ip_address=ip_address,
        )
        raise


def activate_at_once(
    *,
    api_key: ApiKey,
    product: str,
    machine_id: str,
    org_id: str | None = None,
    hostname: str = "",
    engine_version: str = "",
    release_previous: bool = False,
    ephemeral: bool = False,
    ticket: str | None = None,
    **_rest,
) -> hotpath.GrantedActivation | None:
    """The engine API's common case of activate() in one round trip (hotpath.py): an RE activation
    that is granted at once, with the same rules under the same pool lock. Returns None having written
    nothing when the request needs more (a refusal, the line, a KSE rule, an allow-list, a machine
    slot freed by housekeeping, an earlier session to end, SQLite): call activate() then."""
    return hotpath.activate(
        api_key=api_key,
        product=product,
        machine_id=machine_id,
        org_id=org_id,
        hostname=hostname,
        engine_version=engine_version,
        ephemeral=ephemeral,
        release_previous=release_previous,
        ticket=ticket,
    )


@transaction.atomic
def _record_refusal(refusal, *, api_key, user, product, machine_id, org_id, ip_address):
    queue_rules.note_refusal(refusal)
    organizations = Organization.objects.for_user(user)
    if api_key is not None and api_key.organization_id is not None:
        # The key works in that organization only, so the refusal can only concern it.
        organizations = organizations.filter(pk=api_key.organization_id)
    organization = None
    if org_id and not isinstance(refusal, errors.OrganizationNotFound):
        organization = organizations.filter(public_id=org_id).first()
    elif not org_id:
        candidates = list(organizations.filter(pools__product=product)[:2])
        organization = candidates[0] if len(candidates) == 1 else None
    record(
        organization=organization,
        actor=user,
        action=Action.ACTIVATION_REFUSED,
        target_label=f"{product} on {machine_id}",
        after={
            "code": refusal.code,
            "message": refusal.message,
            "details": refusal.details,
            "product": product,
            "machine_id": machine_id,
        },
        ip_address=ip_address,
    )


def _session_for(user, session_id, organization):
    """The person's session, with the database's clock (`db_now`) and whether they are still an
    active member of its pool's organization (`is_member`), all in the one statement heartbeat and
    release already run: the hot path pays no extra query for the membership check."""
    sessions = EngineSession.objects.filter(public_id=session_id, user=user)
    if organization is not None:
        sessions = sessions.filter(pool__organization=organization)
    session = (
        sessions.select_related("pool__organization", "machine")
        .annotate(
            db_now=Now(),
            is_member=Exists(
                Membership.objects.active().filter(
                    user_id=OuterRef("user_id"), organization_id=OuterRef("pool__organization_id")
                )
            ),
        )
        .first()
    )
    if session is None:
        raise errors.SessionNotFound(f"No session {session_id} of yours exists.")
    return session


def _terminated(session):
    reason = session.termination_reason
    return errors.SessionTerminated(
        f"Session {session.public_id} has ended ({EndReason(reason).label.lower()}); activate again.",
        details={"reason": reason},
    )


def heartbeat_at_once(*, key_hash: str, session_id: str) -> tuple[hotpath.Lease, ApiKey] | None:
    """Authenticate the key with this hash and do heartbeat() of its person's live session, in one
    statement (hotpath.py): the lease and the key. Or None having changed nothing: authenticate and
    call heartbeat() then, which answers 404 or 410 and ends what must end."""
    return hotpath.heartbeat(key_hash=key_hash, session_id=session_id)


def release_at_once(*, key_hash: str, session_id: str) -> tuple[hotpath.Released, ApiKey] | None:
    """Authenticate the key with this hash and do release_session() of its person's live session on a
    machine that is not ephemeral, in one statement (hotpath.py): the ended session and the key. Or
    None having changed nothing: authenticate and call release_session() then."""
    return hotpath.release(key_hash=key_hash, session_id=session_id, released=EndReason.RELEASED)


def heartbeat(*, user, session_id: str, organization: Organization | None = None) -> EngineSession:
    """Extend a live lease by the pool's lease length, from the database clock. A lapsed or ended
    session is never revived: a lapsed one is marked expired and the engine is told to activate."""
    with transaction.atomic():
        session = _session_for(user, session_id, organization)
        now = session.db_now
        if session.ended_at is None and session.lease_expires_at > now:
            if not session.is_member:
                # Removed behind remove_member's back (as a membership deleted in the admin used to
                # be): the session ends now, and the engine is told why.
                EngineSession.objects.filter(pk=session.pk).end(EndReason.MEMBER_REMOVED)
            elif not session.pool.is_in_force(now):
                EngineSession.objects.filter(pk=session.pk).end(EndReason.LICENSE_EXPIRED)
            else:
                lease_expires_at = now + timedelta(seconds=session.pool.lease_seconds)
                # Conditional on the lease still running at the database's "now", so a heartbeat
                # racing the lapse cannot bring a dead session back.
                extended = EngineSession.objects.filter(
                    pk=session.pk, ended_at__isnull=True, lease_expires_at__gt=Now()
                ).update(lease_expires_at=lease_expires_at, last_heartbeat_at=now)
                if extended:
                    session.lease_expires_at = lease_expires_at
                    session.last_heartbeat_at = now
                    _note_machine_seen(session.machine, now)
                    return session
        EngineSession.objects.filter(pk=session.pk).lapsed().end(EndReason.EXPIRED)
    session.refresh_from_db(fields=["ended_at", "end_reason", "lease_expires_at"])
    raise _terminated(session)


def _note_machine_seen(machine, now):
    """Keep the machine's last_seen_at current for idle deregistration and the pages, at most once per
    MACHINE_SEEN_RESOLUTION: the session lookup already read it, so most heartbeats write nothing."""
    if machine.last_seen_at > now - MACHINE_SEEN_RESOLUTION:
        return
    Machine.objects.filter(pk=machine.pk, last_seen_at__lt=now).update(last_seen_at=now)
    machine.last_seen_at = now


def release_session(
    *,
    user,
    session_id: str,
    ip_address: str | None = None,
    organization: Organization | None = None,
    by_person: bool = False,
) -> EngineSession:
    """End the person's own session (reason released) and free its license at once. Releasing a
    session that has already ended changes nothing and answers the same. Someone who is no longer a
    member of the session's organization is refused (410), and a session still open ends then with
    reason `member_removed`.

    An engine releasing at the end of its run is routine and not audited; a person ending a session
    from the portal (`by_person`) is, like an admin's withdrawal."""
    with transaction.atomic():
        session = _session_for(user, session_id, organization)
        if not session.is_member:
            EngineSession.objects.filter(pk=session.pk).end(EndReason.MEMBER_REMOVED)
        elif session.ended_at is None:
            ended = EngineSession.objects.filter(pk=session.pk).end(EndReason.RELEASED)
            session.refresh_from_db(fields=["ended_at", "end_reason"])
            if by_person and ended:
                record(
                    organization=session.pool.organization,
                    actor=user,
                    action=Action.SESSION_ENDED,
                    target=session,
                    target_label=f"{session.public_id} on {session.hostname or session.machine.machine_id}",
                    before={"status": "live"},
                    after={"status": "ended", "reason": EndReason.RELEASED},
                    ip_address=ip_address,
                )
    if not session.is_member:
        # Outside the transaction, so the session's end is committed before the refusal is raised.
        session.refresh_from_db(fields=["ended_at", "end_reason", "lease_expires_at"])
        raise _terminated(session)
    return session


def end_what_a_removed_member_holds(sender, *, organization: Organization, user, now, **kwargs) -> dict:
    """organizations.signals.member_removed: the person's sessions in that organization end (reason
    `member_removed`), the machines they activated last are deactivated, their keys restricted to it
    are revoked and their places in its lines are given up. Under the organization's pool locks,
    taken in id order like every activation's, so no session can start for them meanwhile (whichever
    receiver runs first)."""
    LicensePool.objects.for_org(organization).lock_in_order()
    sessions = EngineSession.objects.filter(pool__organization=organization, user=user).end(EndReason.MEMBER_REMOVED)
    # A machine somebody else is running a session on right now stays: their license must not
    # vanish because the last person to activate there was removed.
    machines = (
        Machine.objects.filter(pool__organization=organization, user=user)
        .exclude(Exists(EngineSession.objects.live().filter(machine=OuterRef("pk"))))
        .deactivate(EndReason.MEMBER_REMOVED)
    )
    keys = ApiKey.objects.filter(organization=organization, user=user, revoked_at__isnull=True).update(revoked_at=now)
    tickets = QueueTicket.objects.filter(pool__organization=organization, user=user).end(TicketOutcome.MEMBER_REMOVED)
    return {
        "sessions_ended": sessions,
        "machines_deactivated": machines,
        "api_keys_revoked": keys,
        "queue_tickets_removed": tickets,
    }


@dataclass(frozen=True)
class Housekeeping:
    sessions_expired: int
    machines_deregistered: int
    idempotency_records_deleted: int
    queue_tickets_lapsed: int


@transaction.atomic
def _deregister_idle_machines(pool_id: int) -> int:
    """Under the pool's lock, so an activation cannot pick up a machine as it is deregistered. A pool
    busy with an activation is skipped: the next run (a minute later, from cron) takes it."""
    pool = LicensePool.objects.select_for_update(skip_locked=True).filter(pk=pool_id).first()
    if pool is None:
        return 0
    return Machine.objects.idle_for_pool(pool).deactivate("idle")


# Lapsed sessions ended per transaction. A batch holds its pool's lock (and its sessions' and
# machines' rows) for the few tens of milliseconds it takes, so an activation of that pool waits at
# most that long, and a backlog of 100,000 lapsed leases still clears in seconds.
EXPIRE_BATCH = 500


# On PostgreSQL one statement does a whole batch: it takes the pool's lock (or finds the pool busy),
# chooses and locks the lapsed sessions (skipping rows a heartbeat or release holds), ends them and
# updates their machines, exactly as EngineSessionQuerySet.expire_lapsed() does in four statements
# (SQLite's path; a test runs both on the same sessions and compares). The locks are held for the
# statement and its commit instead of four round trips: on a busy two-core machine each round trip
# costs milliseconds, and they are what an activation waiting for the pool would wait for.
EXPIRE_BATCH_SQL = """
WITH pool AS (
    SELECT id FROM {pool_table} WHERE id = %(pool)s FOR UPDATE {skip_locked}
), lapsed AS (
    SELECT session.id FROM {session_table} session JOIN pool ON session.pool_id = pool.id
    WHERE session.ended_at IS NULL AND session.lease_expires_at <= STATEMENT_TIMESTAMP()
    ORDER BY session.lease_expires_at, session.id
    LIMIT %(limit)s
    FOR UPDATE OF session SKIP LOCKED
), ended AS (
    UPDATE {session_table} session SET ended_at = session.lease_expires_at, end_reason = %(expired)s
    FROM lapsed WHERE session.id = lapsed.id
    RETURNING session.machine_id
), machines AS (
    UPDATE {machine_table} machine
    SET last_seen_at = STATEMENT_TIMESTAMP(),
        deactivated_at = CASE WHEN {ephemeral_left} THEN STATEMENT_TIMESTAMP() ELSE machine.deactivated_at END,
        deactivation_reason = CASE WHEN {ephemeral_left} THEN %(ephemeral)s ELSE machine.deactivation_reason END
    WHERE machine.id IN (SELECT machine_id FROM ended)
)
SELECT (SELECT COUNT(*) FROM pool), (SELECT COUNT(*) FROM ended)
"""
# An ephemeral machine still registered with no live session left; the statement's snapshot sees
# the sessions it ends as they were, lapsed, which is not live either.
EPHEMERAL_LEFT = (
    "(machine.ephemeral AND machine.deactivated_at IS NULL AND NOT EXISTS (SELECT 1 FROM {session_table} live "
    "WHERE live.machine_id = machine.id AND live.ended_at IS NULL AND live.lease_expires_at > STATEMENT_TIMESTAMP()))"
)


@transaction.atomic
def _expire_batch(pool_id: int, *, wait: bool) -> int | None:
    """End up to EXPIRE_BATCH of the pool's lapsed sessions under the pool's lock, as activations
    take it, so the ephemeral machines this frees are deregistered before an activation can pick one
    up, and no activation of the pool holds a row this waits for. Sessions and machines change in
    this one transaction, so no run stops between them and leaves an ephemeral machine registered
    without a session. Returns how many ended, or None when the pool is busy and `wait` is false
    (a pool that no longer exists is found busy without waiting, and ends nothing when waited for)."""
    if connection.vendor != "postgresql":
        pools = LicensePool.objects.filter(pk=pool_id)
        if not (pools.select_for_update() if wait else pools.select_for_update(skip_locked=True)).exists():
            return 0 if wait else None
        return EngineSession.objects.filter(pool_id=pool_id).expire_lapsed(EXPIRE_BATCH)
    quote = connection.ops.quote_name
    session_table = quote(EngineSession._meta.db_table)
    sql = EXPIRE_BATCH_SQL.format(
        pool_table=quote(LicensePool._meta.db_table),
        session_table=session_table,
        machine_table=quote(Machine._meta.db_table),
        skip_locked="" if wait else "SKIP LOCKED",
        ephemeral_left=EPHEMERAL_LEFT.format(session_table=session_table),
    )
    with connection.cursor() as cursor:
        # Housekeeping need not wait for its commit to reach the disk: after a crash that loses it
        # the sessions are still lapsed (and count as ended everywhere), and the next run ends them.
        # Sent with the batch's statement, in the same round trip.
        cursor.execute(
            "SET LOCAL synchronous_commit TO OFF; " + sql,
            {"pool": pool_id, "limit": EXPIRE_BATCH, "expired": EndReason.EXPIRED, "ephemeral": "ephemeral"},
        )
        locked, ended = cursor.fetchone()
    if not locked:
        return 0 if wait else None
    return ended


def _expire_lapsed_sessions() -> int:
    """End every lapsed lease (reason expired), pool by pool in short transactions. A pool busy with
    an activation is passed over and come back to; once only busy pools are left, each batch waits
    its turn for the pool's lock like an activation, so none is starved."""
    pending = set(EngineSession.objects.lapsed().order_by().values_list("pool_id", flat=True).distinct())
    expired = 0
    wait = False
    while pending:
        busy = set()
        for pool_id in sorted(pending):
            ended = _expire_batch(pool_id, wait=wait)
            if ended is None:
                busy.add(pool_id)
                continue
            expired += ended
            if ended < EXPIRE_BATCH:
                pending.discard(pool_id)
        wait = bool(busy) and busy == pending
    return expired


def expire_sessions() -> Housekeeping:
    """End lapsed leases (reason expired), deregister machines past their pool's idle limit, mark queue
    tickets whose engines stopped polling, and drop stale bookkeeping. Every step is an UPDATE or
    DELETE conditional on the row still needing it, so any number of hosts may run this at once: the
    second one to reach a row finds nothing to do."""
    expired = _expire_lapsed_sessions()

    lapsed_tickets = QueueTicket.objects.end_lapsed()

    deregistered = 0
    for pool_id in (
        LicensePool.objects.filter(machine_idle_days__isnull=False).order_by("pk").values_list("pk", flat=True)
    ):
        deregistered += _deregister_idle_machines(pool_id)

    idempotency_deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=Now() - IDEMPOTENCY_RETENTION).delete()
    return Housekeeping(
        sessions_expired=expired,
        machines_deregistered=deregistered,
        idempotency_records_deleted=idempotency_deleted,
        queue_tickets_lapsed=lapsed_tickets,
    )


def _refuse_unless_own_key(user, actor):
    """A key acts as its person, so only they hold a say over it; the pages scope keys to the
    signed-in person too. `actor=None` is an operator's command; superusers are operators."""
    if actor is not None and actor.pk != user.pk and not actor.is_superuser:
        raise errors.NotAllowed("People create and revoke only their own API keys.")


@transaction.atomic
def create_api_key(
    *,
    user,
    name: str,
    organization: Organization | None = None,
    expires_at: datetime | None = None,
    actor,
    ip_address: str | None,
) -> tuple[ApiKey, str]:
    """A new key for `user`; returns the key's row and the raw key, which is never stored."""
    _refuse_unless_own_key(user, actor)
    name = name.strip()
    if not name:
        raise errors.InvalidRequest("Give the key a name.")
    max_length = ApiKey._meta.get_field("name").max_length
    if len(name) > max_length:
        raise errors.InvalidRequest(f"The key's name must be at most {max_length} characters.")
    if (
        organization is not None
        and not Membership.objects.active().filter(user=user, organization=organization).exists()
    ):
        raise errors.InvalidRequest(f"{user.email} is not a member of {organization.name}.")
    if expires_at is not None and expires_at <= timezone.now():
        raise errors.InvalidRequest("The expiry must be in the future.")
    raw_key = ApiKey.generate()
    api_key = ApiKey.objects.create(
        user=user,
        organization=organization,
        name=name,
        prefix=raw_key[:12],
        key_hash=hash_api_key(raw_key),
        expires_at=expires_at,
    )
    _record_key_event(api_key, actor=actor, action=Action.API_KEY_CREATED, ip_address=ip_address)
    return api_key, raw_key


@transaction.atomic
def revoke_api_key(*, api_key: ApiKey, actor, ip_address: str | None) -> bool:
    """Revoke the key; the next request with it is refused. Returns False when it already was."""
    _refuse_unless_own_key(api_key.user, actor)
    revoked = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=Now())
    api_key.refresh_from_db(fields=["revoked_at"])
    if revoked:
        _record_key_event(api_key, actor=actor, action=Action.API_KEY_REVOKED, ip_address=ip_address)
    return bool(revoked)


def _record_key_event(api_key, *, actor, action, ip_address):
    # A key without an organization works in every organization of its owner, so each of their
    # organizations' audit logs shows it.
    if api_key.organization is not None:
        organizations = [api_key.organization]
    else:
        organizations = list(Organization.objects.for_user(api_key.user)) or [None]
    for organization in organizations:
        record(
            organization=organization,
            actor=actor,
            action=action,
            target=api_key,
            target_label=f"API key {api_key.name} ({api_key.prefix}…) of {api_key.user.email}",
            after={
                "name": api_key.name,
                "prefix": api_key.prefix,
                "organization": api_key.organization.public_id if api_key.organization else None,
                "expires_at": iso(api_key.expires_at),
            },
            ip_address=ip_address,
        )


LAST_USED_RESOLUTION = timedelta(minutes=5)


def touch_api_key(api_key: ApiKey) -> None:
    """Note that the key was used, at most once per LAST_USED_RESOLUTION: engines heartbeat every
    minute, and a write per request would make the key row the busiest row in the database."""
    if api_key.last_used_at is not None and api_key.last_used_at > timezone.now() - LAST_USED_RESOLUTION:
        return
    ApiKey.objects.filter(pk=api_key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=Now() - LAST_USED_RESOLUTION)
    ).update(last_used_at=Now())


@dataclass(frozen=True)
class IdempotencyClaim:
    record: IdempotencyRecord
    replay: bool


def request_fingerprint(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def claim_idempotency_key(*, api_key: ApiKey, key: str, fingerprint: str) -> IdempotencyClaim:
    """Claim `key` for a request made with `api_key`, or find the answer a finished one left with
    that same API key (another key's request, even the same person's, is decided afresh).

    Call inside the transaction that decides the request and stores its answer. The claim is a row
    that transaction inserts: a concurrent duplicate's insert waits on the unique index until the
    first request's transaction ends, then replays the answer it committed; if it rolled back (a
    database fault, a worker killed mid-request), the duplicate's insert succeeds and it is decided
    afresh. So every copy gets the same answer, and no claim outlives the request that made it."""
    if not transaction.get_connection().in_atomic_block:
        # In autocommit the claim would commit without its answer and refuse every retry as in use.
        raise RuntimeError("An Idempotency-Key is claimed inside the transaction that decides the request.")
    for _ in range(3):
        try:
            with transaction.atomic():
                claim = IdempotencyRecord.objects.create(
                    api_key=api_key, key=key, request_fingerprint=fingerprint, created_at=Now()
                )
                return IdempotencyClaim(claim, False)
        except IntegrityError:
            pass
        # Claims are timed by the database's clock, so web hosts whose clocks differ agree on when
        # a claim was abandoned.
        existing = (
            IdempotencyRecord.objects.filter(api_key=api_key, key=key)
            .annotate(
                abandoned=ExpressionWrapper(
                    Q(created_at__lte=Now() - IDEMPOTENCY_CLAIM_TIMEOUT), output_field=BooleanField()
                )
            )
            .first()
        )
        if existing is None:
            continue  # deleted by housekeeping meanwhile
        if existing.request_fingerprint != fingerprint:
            raise errors.IdempotencyKeyReused()
        if existing.status_code is not None:
            return IdempotencyClaim(existing, True)
        # A committed claim without an answer was left by releases that committed the claim apart
        # from the decision: in use while recent, taken over once abandoned.
        if not existing.abandoned:
            raise errors.IdempotencyKeyInUse()
        if IdempotencyRecord.objects.filter(
            pk=existing.pk, status_code__isnull=True, created_at=existing.created_at
        ).update(created_at=Now()):
            existing.refresh_from_db()
            return IdempotencyClaim(existing, False)
    raise errors.IdempotencyKeyInUse()


def complete_idempotency_claim(*, record: IdempotencyRecord, status_code: int, body: dict) -> None:
    """Store the answer; call inside the transaction of the change it answers."""
    IdempotencyRecord.objects.filter(pk=record.pk).update(status_code=status_code, response_body=body)


def iso(value: datetime | None) -> str | None:
    """The contract's time format: ISO 8601 in UTC with a Z suffix."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
