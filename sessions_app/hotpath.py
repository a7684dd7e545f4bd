"""The engine API's hot path in one database round trip per call: authentication, a granted RE
activation, a heartbeat that extends a live lease, a release of a live session.

Each call here either does the whole job exactly as the general path in actions.py would, under the
same locks, or does nothing and returns None; the caller then takes the general path, which decides
afresh and gives every refusal, queue answer and edge case its exact answer. So these statements only
have to recognise the common case, never explain the others.

Why hand-written SQL (STYLE.md allows it where the ORM's cost shows): on a busy two-core machine each
round trip to PostgreSQL costs milliseconds, and the ORM's compilation of the ten-odd statements an
activation took cost about a fifth of a worker's time (docs/PERFORMANCE.md, "Where the time goes").
tests/sessions_app/test_hot_path.py runs every case through both paths and compares what they write
and answer.

Each statement is a server-side prepared statement, prepared once per database connection: planning
these joins cost PostgreSQL more than running them (0.2 ms to plan a heartbeat's update, 0.75 ms once
it authenticates too, against 0.1 ms to run it), on every call. Behind PgBouncer in transaction
pooling a connection's prepared statements would not follow it from one transaction to the next, so
with `disable_server_side_cursors=true` in DATABASE_URL (which the README asks of that setup) the same
statements are sent as plain SQL and planned each time.

PostgreSQL only; SQLite (development, the default test run) takes the general path for everything
but authentication.
"""

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import DatabaseError, connection
from django.db.models.functions import Now
from django.utils.dateparse import parse_datetime

from licenses.models import LicensePool, OfflineLicense, Product, heartbeat_interval
from organizations.models import Membership, Organization, User

from .models import MACHINE_SEEN_RESOLUTION, ApiKey, EngineSession, Machine, QueueTicket, generate_session_id


def _tables():
    quote = connection.ops.quote_name
    return {
        "apikey": quote(ApiKey._meta.db_table),
        "user": quote(User._meta.db_table),
        "pool": quote(LicensePool._meta.db_table),
        "organization": quote(Organization._meta.db_table),
        "membership": quote(Membership._meta.db_table),
        "session": quote(EngineSession._meta.db_table),
        "machine": quote(Machine._meta.db_table),
        "offline": quote(OfflineLicense._meta.db_table),
        "ticket": quote(QueueTicket._meta.db_table),
    }


def _datetime(value):
    """A datetime as the ORM would load it: SQLite hands them back naive (or as text), in UTC."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def enabled():
    """Whether the hot path runs: on PostgreSQL. SQLite takes the general path. (Tests switch the hot
    path off on PostgreSQL by replacing _enabled, which every function here asks.)"""
    return _enabled()


def _enabled():
    return connection.vendor == "postgresql"


# The SQL type of every parameter of the statements below, declared when they are prepared, since
# PostgreSQL cannot always infer one from its context.
PARAMETER_TYPES = {
    "key_hash": "text",
    "session_id": "text",
    "released": "text",
    "seen_resolution": "interval",
    "product": "text",
    "user": "bigint",
    "org_id": "text",
    "key_organization": "bigint",
    "machine_id": "text",
    "hostname": "text",
    "engine_version": "text",
    "ephemeral": "boolean",
}
PARAMETER = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class Statement:
    """One hot-path statement, by the name it is prepared under, and its SQL with %(name)s parameters."""

    name: str
    sql: str

    @functools.cached_property
    def text(self):
        return self.sql.strip().rstrip(";")

    @functools.cached_property
    def parameters(self):
        return list(dict.fromkeys(PARAMETER.findall(self.sql)))

    @functools.cached_property
    def prepare(self):
        numbers = {name: f"${index}" for index, name in enumerate(self.parameters, start=1)}
        body = PARAMETER.sub(lambda match: numbers[match.group(1)], self.text)
        types = ", ".join(PARAMETER_TYPES[name] for name in self.parameters)
        return f"PREPARE {self.name} ({types}) AS {body}"

    @functools.cached_property
    def execute(self):
        return f"EXECUTE {self.name} ({', '.join(f'%({name})s' for name in self.parameters)})"


# Which statements this thread's database connection has prepared: (that connection, names), where
# names is None when it is not known, because a round trip that was preparing failed part-way and
# PREPARE is not undone by a rollback. The next round trip then starts from DEALLOCATE ALL.
_PREPARED = "_hot_path_prepared"


def _fetch_row(*calls, before=""):
    """Run the statements of `calls` ((Statement, parameters) pairs) in one round trip, as one simple
    query (so one transaction in autocommit), after `before` (plain SQL), and return the row the last
    one answers, or None. Each statement is prepared in that same round trip the first time this
    connection runs it, and executed. With server-side state off (PgBouncer in transaction pooling)
    the statements are sent as plain SQL instead."""
    with connection.cursor() as cursor:
        _run(cursor, calls, before)
        return cursor.fetchone()


def _run(cursor, calls, before):
    parameters = {}
    for _statement, values in calls:
        parameters.update(values)
    parts = [before] if before else []
    if not _enabled() or connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
        cursor.execute("; ".join(parts + [statement.text for statement, _values in calls]), parameters)
        return
    raw, prepared = getattr(connection, _PREPARED, (None, None))
    if raw is not connection.connection:
        raw, prepared = connection.connection, set()
    if prepared is None:
        parts.append("DEALLOCATE ALL")
    missing = [statement for statement, _values in calls if not prepared or statement.name not in prepared]
    parts += [statement.prepare for statement in missing]
    parts += [statement.execute for statement, _values in calls]
    try:
        cursor.execute("; ".join(parts), parameters)
    except DatabaseError:
        setattr(connection, _PREPARED, (raw, None if missing else prepared))
        raise
    setattr(connection, _PREPARED, (raw, (prepared or set()) | {statement.name for statement in missing}))


# Authentication: the key's own row and its person's, nothing else (the handlers need the person for
# the general path and for audit records, the key's organization only by id). Same conditions as
# ApiKey.objects.usable(); test_hot_path.py compares them. The heartbeat and the release below check
# the same conditions in their own statement (KEY_CTE).
KEY_USABLE = """apikey.key_hash = %(key_hash)s AND apikey.revoked_at IS NULL AND person.is_active
    AND (apikey.expires_at IS NULL OR apikey.expires_at > {now})"""
API_KEY_SQL = """
SELECT apikey.id, apikey.organization_id, apikey.last_used_at, {person_columns}
FROM {apikey} apikey JOIN {user} person ON person.id = apikey.user_id
WHERE {key_usable}
"""


def _person_fields():
    return [field for field in User._meta.concrete_fields]


@functools.cache
def _person_conversions(vendor):
    """Each of the person's fields with the ORM's conversions of its column on this database, worked
    out once per process: none on PostgreSQL; SQLite's booleans and datetimes."""
    conversions = []
    for field in _person_fields():
        column = field.get_col(User._meta.db_table)
        converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        conversions.append((field, column, converters))
    return conversions


@functools.cache
def _api_key_statement(vendor):
    query = ApiKey.objects.all().query
    now, _ = query.get_compiler(connection=connection).compile(Now().resolve_expression(query))
    quote = connection.ops.quote_name
    person_columns = ", ".join(f"person.{quote(field.column)}" for field in _person_fields())
    sql = API_KEY_SQL.format(key_usable=KEY_USABLE.format(now=now), person_columns=person_columns, **_tables())
    return Statement("katalon_api_key", sql)


def usable_api_key(key_hash: str) -> ApiKey | None:
    """The usable key with this hash, with its person, or None. The key's other fields are deferred,
    as QuerySet.only() would leave them: loaded if read, never overwritten by a save."""
    row = _fetch_row((_api_key_statement(connection.vendor), {"key_hash": key_hash}))
    if row is None:
        return None
    pk, organization_id, last_used_at, *person = row
    conversions = _person_conversions(connection.vendor)
    converted = []
    for (_field, column, converters), value in zip(conversions, person, strict=True):
        for converter in converters:
            value = converter(value, column, connection)
        converted.append(value)
    user = User.from_db(connection.alias, [field.attname for field, _column, _converters in conversions], converted)
    api_key = ApiKey.from_db(
        connection.alias,
        ["id", "user_id", "organization_id", "key_hash", "last_used_at"],
        [pk, user.pk, organization_id, key_hash, _datetime(last_used_at)],
    )
    api_key.user = user
    return api_key


# The key, as the first part of a statement that goes on to do the job with it. MATERIALIZED keeps its
# planning apart from the rest's, which halves the planning of a statement sent as plain SQL (behind
# PgBouncer) and costs nothing once it is prepared.
KEY_CTE = """apikey AS MATERIALIZED (
    SELECT apikey.id, apikey.user_id, apikey.organization_id, apikey.last_used_at
    FROM {apikey} apikey JOIN {user} person ON person.id = apikey.user_id
    WHERE {key_usable}
)"""


def _key_cte():
    return KEY_CTE.format(key_usable=KEY_USABLE.format(now="STATEMENT_TIMESTAMP()"), **_tables())


def _used_key(pk, last_used_at):
    """The key a hot-path statement authenticated, as much of it as actions.touch_api_key reads."""
    return ApiKey.from_db(connection.alias, ["id", "last_used_at"], [pk, last_used_at])


# An RE activation that is granted, as two statements sent in one round trip. PostgreSQL runs the
# statements of one simple query as one transaction (autocommit, or the caller's transaction), each
# with its own snapshot, like two round trips of one atomic() block:
#
# 1. The lock. Choose the pool as actions._choose_pool does (the organization named, or the only
#    one of the person's organizations with that product; restricted to the key's organization) and
#    lock its row FOR UPDATE, as every activation does (actions._lock_pools; no organization row is
#    locked). Which pool was locked is handed to the second statement in a transaction-local setting,
#    so the second one can never count against a pool it does not hold. No pool found (unknown or
#    forbidden organization, several candidates, no pool): nothing is locked and nothing is granted.
#
# 2. The decision and the writes, with a snapshot taken after the lock was granted, so every
#    activation that committed before is counted (exactly the counts of queue.count_pool, read at the
#    clock after the lock: clock_timestamp(), since the statements of one query share their
#    statement_timestamp()). Granted only when every rule of the general path holds: still an active
#    member (actions._refuse_unless_may_activate re-reads it after the lock too), subscription in
#    force, no machine allow-list (the general path matches patterns in Python), a license free that
#    no waiting ticket can take (queue.may_take_license without a ticket), and the machine registered
#    or a machine slot free. Then the machine is registered or brought up to date, and the session
#    inserted. Anything else writes nothing and leaves the request to the general path.
#
# A new machine is registered here only when the general path's housekeeping before it would do
# nothing: it ends the pool's lapsed leases and deregisters machines past the pool's idle limit before
# counting machines (actions._refuse_unless_machine_slot), so a pool with lapsed leases or an idle
# limit registers new machines through the general path, and the figures answered are the same.
ACTIVATE_SQL = """
SELECT set_config('katalon.activation_pool', pool.id::text, true)
FROM {pool} pool
WHERE pool.id = (
    SELECT CASE WHEN COUNT(*) = 1 THEN MIN(candidate.id) END
    FROM {pool} candidate
    JOIN {membership} membership ON membership.organization_id = candidate.organization_id
    {organization_named}
    WHERE candidate.product = %(product)s AND membership.user_id = %(user)s AND membership.removed_at IS NULL
        {key_organization}
)
FOR UPDATE OF pool;

WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS now
), facts AS MATERIALIZED (
    SELECT pool.id, pool.product, pool.quota, pool.machine_quota, pool.starts_at, pool.expires_at,
        pool.lease_seconds, pool.machine_allow_list, organization.public_id AS organization_public_id,
        organization.name AS organization_name, clock.now,
        EXISTS (SELECT 1 FROM {membership} membership WHERE membership.user_id = %(user)s
                AND membership.organization_id = pool.organization_id AND membership.removed_at IS NULL) AS is_member,
        (SELECT COUNT(*) FROM {session} session
         WHERE session.pool_id = pool.id AND session.ended_at IS NULL AND session.lease_expires_at > clock.now) AS live,
        (SELECT COUNT(*) FROM {offline} offline WHERE offline.pool_id = pool.id AND offline.expires_at > clock.now)
            AS offline,
        (SELECT COUNT(*) FROM {ticket} ticket WHERE ticket.pool_id = pool.id AND ticket.ended_at IS NULL
         AND ticket.poll_before > clock.now AND ticket.expires_at > clock.now) AS waiting,
        (SELECT COUNT(*) FROM {machine} machine WHERE machine.pool_id = pool.id AND machine.deactivated_at IS NULL)
            AS registered,
        EXISTS (SELECT 1 FROM {session} session WHERE session.pool_id = pool.id AND session.ended_at IS NULL
                AND session.lease_expires_at <= clock.now) AS has_lapsed,
        COALESCE(pool.machine_idle_days, 0) > 0 AS has_idle_limit,
        known.id AS machine_pk, known.registered_at AS machine_registered_at
    FROM {pool} pool
    JOIN {organization} organization ON organization.id = pool.organization_id
    CROSS JOIN clock
    LEFT JOIN {machine} known ON known.pool_id = pool.id AND known.machine_id = %(machine_id)s
        AND known.deactivated_at IS NULL
    WHERE pool.id = NULLIF(current_setting('katalon.activation_pool', true), '')::bigint
), decision AS MATERIALIZED (
    SELECT facts.*, (
        facts.product = 'RE' AND facts.is_member AND facts.starts_at <= facts.now AND facts.now < facts.expires_at
        AND facts.machine_allow_list = ''
        AND facts.quota - facts.live - facts.offline > facts.waiting
        AND (facts.machine_pk IS NOT NULL
             OR (facts.registered < facts.machine_quota AND NOT facts.has_lapsed AND NOT facts.has_idle_limit))
    ) AS granted
    FROM facts
), registration AS (
    INSERT INTO {machine} (pool_id, machine_id, hostname, user_id, ephemeral, registered_at, last_seen_at,
                           deactivation_reason)
    SELECT decision.id, %(machine_id)s, %(hostname)s, %(user)s, %(ephemeral)s, decision.now, decision.now, ''
    FROM decision WHERE decision.granted AND decision.machine_pk IS NULL
    RETURNING id, registered_at
), machine_seen AS (
    -- What actions._grant writes to a known machine, written only when it changes something: its
    -- last_seen_at moves at the resolution heartbeats keep (MACHINE_SEEN_RESOLUTION).
    UPDATE {machine} machine
    SET hostname = COALESCE(NULLIF(%(hostname)s, ''), machine.hostname), user_id = %(user)s,
        ephemeral = %(ephemeral)s, last_seen_at = decision.now
    FROM decision
    WHERE decision.granted AND machine.id = decision.machine_pk AND (
        (%(hostname)s <> '' AND machine.hostname <> %(hostname)s) OR machine.user_id IS DISTINCT FROM %(user)s
        OR machine.ephemeral <> %(ephemeral)s OR machine.last_seen_at <= decision.now - %(seen_resolution)s)
), started AS (
    INSERT INTO {session} (public_id, pool_id, machine_id, user_id, hostname, engine_version, started_at,
                           last_heartbeat_at, lease_expires_at, end_reason)
    SELECT %(session_id)s, decision.id, COALESCE(decision.machine_pk, (SELECT id FROM registration)), %(user)s,
        %(hostname)s, %(engine_version)s, decision.now, decision.now,
        decision.now + decision.lease_seconds * INTERVAL '1 second', ''
    FROM decision WHERE decision.granted
    RETURNING lease_expires_at
)
SELECT decision.granted, decision.id, decision.quota, decision.machine_quota, decision.expires_at,
    decision.lease_seconds, decision.organization_public_id, decision.organization_name,
    decision.live + decision.offline, decision.registered, decision.machine_pk,
    COALESCE(decision.machine_registered_at, (SELECT registered_at FROM registration)),
    (SELECT lease_expires_at FROM started)
FROM decision
"""


@functools.cache
def _activate_statements(org_named, key_restricted):
    """The lock (one variant per kind of request) and the decision, as statements to prepare."""
    tables = _tables()
    lock, decide = ACTIVATE_SQL.format(
        organization_named=(
            f"JOIN {tables['organization']} named ON named.id = candidate.organization_id "
            "AND named.public_id = %(org_id)s"
        )
        if org_named
        else "",
        key_organization="AND candidate.organization_id = %(key_organization)s" if key_restricted else "",
        **tables,
    ).split(";\n")
    return (
        Statement(f"katalon_activate_lock_{org_named:d}{key_restricted:d}", lock),
        Statement("katalon_activate", decide),
    )


@dataclass(frozen=True)
class GrantedActivation:
    """What a granted activation answers, as actions.Activation gives it."""

    session: EngineSession
    pool: LicensePool
    machine: Machine
    licenses_used: int
    machines_used: int


def activate(
    *, api_key, product, machine_id, org_id, hostname, engine_version, ephemeral, release_previous, ticket
) -> GrantedActivation | None:
    """Grant an RE activation in one round trip, or return None having written nothing (the general
    path then decides). Requests that end earlier sessions or poll a ticket always take the general path."""
    if not _enabled() or product != Product.RE or release_previous or ticket is not None:
        return None
    session_id = generate_session_id()
    lock, decide = _activate_statements(bool(org_id), api_key.organization_id is not None)
    parameters = {
        "product": product,
        "user": api_key.user_id,
        "org_id": org_id,
        "key_organization": api_key.organization_id,
        "machine_id": machine_id,
        "hostname": hostname,
        "engine_version": engine_version,
        "ephemeral": ephemeral,
        "session_id": session_id,
        "seen_resolution": MACHINE_SEEN_RESOLUTION,
    }
    row = _fetch_row((lock, parameters), (decide, parameters))
    if row is None or not row[0]:
        return None
    (
        _granted,
        pool_pk,
        quota,
        machine_quota,
        expires_at,
        lease_seconds,
        organization_public_id,
        organization_name,
        licenses_used,
        registered,
        machine_pk,
        registered_at,
        lease_expires_at,
    ) = row
    organization = Organization(public_id=organization_public_id, name=organization_name)
    pool = LicensePool(
        pk=pool_pk,
        product=product,
        quota=quota,
        machine_quota=machine_quota,
        expires_at=expires_at,
        lease_seconds=lease_seconds,
    )
    pool.organization = organization
    return GrantedActivation(
        session=EngineSession(public_id=session_id, lease_expires_at=lease_expires_at),
        pool=pool,
        machine=Machine(machine_id=machine_id, registered_at=registered_at),
        licenses_used=licenses_used + 1,
        machines_used=registered if machine_pk is not None else registered + 1,
    )


# A heartbeat that extends a live lease, authenticated in the same statement: the session of the
# key's person (in the key's organization, if the key is restricted to one), not ended, lease still
# running, its pool in force, its person still an active member. The same conditions as
# _authenticate() and actions.heartbeat() check, in the UPDATE that extends the lease. Its machine's
# last_seen_at moves as actions._note_machine_seen moves it. No row: the general path authenticates
# and answers 401, 404 or 410 (and ends what must end).
HEARTBEAT_SQL = """
WITH {key_cte}, beat AS (
    UPDATE {session} session
    SET lease_expires_at = STATEMENT_TIMESTAMP() + pool.lease_seconds * INTERVAL '1 second',
        last_heartbeat_at = STATEMENT_TIMESTAMP()
    FROM apikey, {pool} pool
    WHERE session.public_id = %(session_id)s AND session.user_id = apikey.user_id AND pool.id = session.pool_id
        AND (apikey.organization_id IS NULL OR pool.organization_id = apikey.organization_id)
        AND session.ended_at IS NULL AND session.lease_expires_at > STATEMENT_TIMESTAMP()
        AND pool.starts_at <= STATEMENT_TIMESTAMP() AND STATEMENT_TIMESTAMP() < pool.expires_at
        AND EXISTS (SELECT 1 FROM {membership} membership WHERE membership.user_id = session.user_id
                    AND membership.organization_id = pool.organization_id AND membership.removed_at IS NULL)
    RETURNING session.lease_expires_at, pool.lease_seconds, session.machine_id, apikey.id AS key_id,
        apikey.last_used_at AS key_last_used_at
), seen AS (
    UPDATE {machine} machine SET last_seen_at = STATEMENT_TIMESTAMP()
    FROM beat
    WHERE machine.id = beat.machine_id AND machine.last_seen_at <= STATEMENT_TIMESTAMP() - %(seen_resolution)s
)
SELECT lease_expires_at, lease_seconds, key_id, key_last_used_at FROM beat
"""
# A heartbeat's commit need not wait for the disk: a crash that loses the last fraction of a second
# of heartbeats leaves those leases where the previous heartbeat put them, a heartbeat interval
# earlier and still running (a lease lasts several intervals), and the engine's next heartbeat
# extends them again. Grants and releases still wait for theirs.
HEARTBEAT_COMMIT = "SET LOCAL synchronous_commit TO OFF"


@functools.cache
def _heartbeat_statement():
    sql = HEARTBEAT_SQL.format(key_cte=_key_cte(), **_tables())
    return Statement("katalon_heartbeat", sql)


@dataclass(frozen=True)
class Lease:
    public_id: str
    lease_expires_at: datetime
    heartbeat_interval_seconds: int


def heartbeat(*, key_hash, session_id) -> tuple[Lease, ApiKey] | None:
    """Authenticate the key with this hash and extend its person's live lease in one statement: the
    lease and the key used. Or None having changed nothing."""
    if not _enabled():
        return None
    row = _fetch_row(
        (
            _heartbeat_statement(),
            {"key_hash": key_hash, "session_id": session_id, "seen_resolution": MACHINE_SEEN_RESOLUTION},
        ),
        before=HEARTBEAT_COMMIT,
    )
    if row is None:
        return None
    lease_expires_at, lease_seconds, key_pk, key_last_used_at = row
    return Lease(session_id, lease_expires_at, heartbeat_interval(lease_seconds)), _used_key(key_pk, key_last_used_at)


# A release of a live session on a machine that is not ephemeral, by an active member, authenticated
# in the same statement as the heartbeat is: what EngineSession.objects.end(RELEASED) does to it (ended
# now, its machine seen now). An ephemeral machine may have to be deregistered once its last session
# ends, which needs a look at its other sessions after this one's end is visible: the general path
# does that. No row: a bad key, already ended, lapsed, not a member any more, unknown, ephemeral: the
# general path answers.
RELEASE_SQL = """
WITH {key_cte}, ended AS (
    UPDATE {session} session SET ended_at = STATEMENT_TIMESTAMP(), end_reason = %(released)s
    FROM apikey, {pool} pool, {machine} machine
    WHERE session.public_id = %(session_id)s AND session.user_id = apikey.user_id AND pool.id = session.pool_id
        AND (apikey.organization_id IS NULL OR pool.organization_id = apikey.organization_id)
        AND session.ended_at IS NULL AND session.lease_expires_at > STATEMENT_TIMESTAMP()
        AND machine.id = session.machine_id AND NOT machine.ephemeral
        AND EXISTS (SELECT 1 FROM {membership} membership WHERE membership.user_id = session.user_id
                    AND membership.organization_id = pool.organization_id AND membership.removed_at IS NULL)
    RETURNING session.ended_at, session.machine_id, apikey.id AS key_id, apikey.last_used_at AS key_last_used_at
), seen AS (
    UPDATE {machine} machine SET last_seen_at = STATEMENT_TIMESTAMP() FROM ended WHERE machine.id = ended.machine_id
)
SELECT ended_at, key_id, key_last_used_at FROM ended
"""


@functools.cache
def _release_statement():
    sql = RELEASE_SQL.format(key_cte=_key_cte(), **_tables())
    return Statement("katalon_release", sql)


@dataclass(frozen=True)
class Released:
    public_id: str
    ended_at: datetime
    end_reason: str


def release(*, key_hash, session_id, released) -> tuple[Released, ApiKey] | None:
    """Authenticate the key with this hash and end its person's live session (reason `released`) in one
    statement: the session as ended and the key used. Or None having changed nothing."""
    if not _enabled():
        return None
    row = _fetch_row((_release_statement(), {"key_hash": key_hash, "session_id": session_id, "released": released}))
    if row is None:
        return None
    ended_at, key_pk, key_last_used_at = row
    return Released(session_id, ended_at, released), _used_key(key_pk, key_last_used_at)
