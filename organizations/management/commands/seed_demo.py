import heapq
import json
import random
from collections import Counter
from datetime import datetime, timedelta
from io import StringIO

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone

from licenses.actions import pool_terms
from licenses.models import LicensedUser, LicensePool, Product
from organizations.actions import create_organization
from organizations.audit import Action
from organizations.models import AuditEvent, Invitation, Membership, Organization, Role
from sessions_app.models import (
    EndReason,
    EngineSession,
    Machine,
    QueueTicket,
    QueueWaitHour,
    QuotaRefusalHour,
    TicketOutcome,
    generate_session_id,
    generate_ticket_id,
    wait_resolution,
)

DEMO_ORGANIZATION = "Demo QA"
DEMO_PARTNER_ORGANIZATION = "Globex Partners"
DEMO_PASSWORD = "demo-password"
DEMO_PEOPLE = [
    ("owner@demo.example", "Olivia Owner", Role.OWNER),
    ("admin@demo.example", "Adam Admin", Role.ADMIN),
    ("member@demo.example", "Mia Member", Role.MEMBER),
]
BATCH = 5_000
# Rows per COPY statement: large enough to amortise the round trip, small enough to keep the
# buffer a few megabytes.
COPY_ROWS = 50_000
# A realistic audit log grows with the organization: about 100,000 events for a year of
# 10,000 members and 10,000 machines, and never fewer than a handful a day.
AUDIT_EVENTS_PER_MEMBER_OR_MACHINE_PER_YEAR = 5
MINIMUM_AUDIT_EVENTS_PER_DAY = 5
# What people and engines do besides joining, weighted by how often a busy organization does it.
AUDIT_MIX = [
    (Action.ACTIVATION_REFUSED, 40),
    (Action.SESSION_ENDED, 12),
    (Action.API_KEY_CREATED, 10),
    (Action.MACHINE_DEACTIVATED, 8),
    (Action.API_KEY_REVOKED, 4),
    (Action.MEMBER_ROLE_CHANGED, 4),
    (Action.INVITATION_RESENT, 4),
    (Action.INVITATION_REVOKED, 3),
    (Action.LICENSE_GRANTED, 3),
    (Action.LICENSE_REVOKED, 3),
    (Action.OFFLINE_LICENSE_CREATED, 1),
]
# The longest an engine of the demo history waited in line (its --wait) before it was refused.
QUEUE_WAIT_LIMIT = timedelta(minutes=30)
HISTORY_END_REASONS = [EndReason.RELEASED] * 45 + [EndReason.EXPIRED] * 4 + [EndReason.WITHDRAWN]


def insert_rows(model, fields, rows):
    """Insert plain tuples, in `fields` order, far faster than building model instances: COPY on
    PostgreSQL (a million sessions in seconds), one executemany elsewhere."""
    meta = model._meta
    table = connection.ops.quote_name(meta.db_table)
    columns = ", ".join(connection.ops.quote_name(meta.get_field(name).column) for name in fields)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            sql = f"COPY {table} ({columns}) FROM STDIN"
            for start in range(0, len(rows), COPY_ROWS):
                buffer = StringIO()
                for row in rows[start : start + COPY_ROWS]:
                    buffer.write("\t".join(_copy_text(value) for value in row))
                    buffer.write("\n")
                buffer.seek(0)
                cursor.copy_expert(sql, buffer)
        else:
            placeholders = ", ".join(["%s"] * len(fields))
            cursor.executemany(
                f"INSERT INTO {table} ({columns}) VALUES ({placeholders})",  # noqa: S608  # nosec B608  # table and column names from the model, values as parameters
                [[_adapted(value) for value in row] for row in rows],
            )


def _copy_text(value):
    """A value in COPY's text format: \\N for NULL, backslash escapes for the separators."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        value = json.dumps(value)
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _hour(moment):
    return moment.replace(minute=0, second=0, microsecond=0)


def _adapted(value):
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


class Command(BaseCommand):
    help = (
        "Creates demo data: the 'Demo QA' organization with KSE and RE pools, members, machines, live "
        "sessions, a history of ended ones and an audit log. With larger sizes, data for benchmarks."
    )

    def add_arguments(self, parser):
        parser.add_argument("--members", type=int, default=12, help="members besides the three demo accounts")
        parser.add_argument("--machines", type=int, default=8, help="registered RE machines")
        parser.add_argument("--sessions", type=int, default=4, help="live RE sessions")
        parser.add_argument("--history-days", type=int, default=30, help="days of ended sessions and audit events")
        parser.add_argument(
            "--history-sessions",
            type=int,
            default=None,
            help="exactly this many ended RE sessions over --history-days, never more at once than the quota "
            "(default: a working week's pattern sized by the quota)",
        )
        parser.add_argument(
            "--audit-events",
            type=int,
            default=None,
            help="audit events over --history-days (default: grows with members, machines and days; "
            "about 100,000 for a year of 10,000 of each)",
        )
        parser.add_argument("--once", action="store_true", help="do nothing when the demo data is already there")
        parser.add_argument("--seed", type=int, default=42, help="random seed, for repeatable data")

    def handle(self, *args, **options):
        for name in ("members", "machines", "sessions", "history_days", "history_sessions", "audit_events"):
            if options[name] is not None and options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} cannot be negative.")
        if options["sessions"] > options["machines"]:
            raise CommandError("--sessions cannot exceed --machines: each live session runs on a registered machine.")
        if options["history_sessions"] and not options["history_days"]:
            raise CommandError("--history-sessions needs --history-days of at least 1 to spread them over.")
        if options["history_sessions"] and not options["machines"]:
            raise CommandError("--history-sessions needs --machines of at least 1 to run them on.")
        if Organization.objects.filter(name=DEMO_ORGANIZATION).exists():
            if options["once"]:
                self.stdout.write("Demo data is already loaded.")
                return
            raise CommandError(f"Demo data already exists (organization {DEMO_ORGANIZATION!r}); use a fresh database.")
        self.random = random.Random(options["seed"])
        with transaction.atomic():
            organization = self.seed(options)
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo data loaded: {DEMO_ORGANIZATION} ({organization.public_id}). "
                f"Sign in as {DEMO_PEOPLE[0][0]} / {DEMO_PASSWORD}."
            )
        )

    def seed(self, options):
        User = get_user_model()
        now = timezone.now()
        days = options["history_days"]
        starts, expires = now - timedelta(days=max(days, 1) + 30), now + timedelta(days=335)
        password = make_password(DEMO_PASSWORD)
        people = {}
        for email, name, _role in DEMO_PEOPLE:
            people[email] = User.objects.create(email=email, name=name, password=password)
        owner = people[DEMO_PEOPLE[0][0]]
        organization = create_organization(name=DEMO_ORGANIZATION, owner=owner)
        for email, _name, role in DEMO_PEOPLE[1:]:
            Membership.objects.create(organization=organization, user=people[email], role=role, joined_at=starts)

        # Hashing a password per member would take minutes at benchmark sizes; these accounts
        # are for lists and figures, so they get one shared unusable password.
        unusable = make_password(None)
        extra = User.objects.bulk_create(
            [
                User(email=f"member-{n:05d}@demo.example", name=f"Demo Member {n}", password=unusable)
                for n in range(1, options["members"] + 1)
            ],
            batch_size=BATCH,
        )
        # People joined over the history, the way an organization grows.
        memberships = Membership.objects.bulk_create(
            [
                Membership(
                    organization=organization,
                    user=user,
                    role=Role.MEMBER,
                    joined_at=self.moment_between(starts, now - timedelta(hours=1)),
                )
                for user in extra
            ],
            batch_size=BATCH,
        )
        removed = self.seed_removed_members(organization, owner, len(extra), starts, now, unusable)
        self.seed_pending_invitations(organization, owner, len(extra), now)
        members = [*people.values(), *extra]

        kse = LicensePool.objects.create(
            organization=organization,
            product=Product.KSE,
            quota=5,
            machine_quota=10,
            starts_at=starts,
            expires_at=expires,
            lease_seconds=300,
        )
        re_quota = max(10, options["sessions"])
        re_pool = LicensePool.objects.create(
            organization=organization,
            product=Product.RE,
            quota=re_quota,
            machine_quota=max(20, options["machines"]),
            starts_at=starts,
            expires_at=expires,
            lease_seconds=300,
            machine_idle_days=30,
        )
        for user in (owner, people["admin@demo.example"]):
            LicensedUser.objects.create(pool=kse, user=user, granted_by=owner, granted_at=starts)

        machines = Machine.objects.bulk_create(
            [
                Machine(
                    pool=re_pool,
                    machine_id=f"ci-agent-{n:05d}",
                    hostname=f"ci-agent-{n:05d}.demo.example",
                    user=members[n % len(members)],
                    registered_at=starts,
                    last_seen_at=now,
                )
                for n in range(1, options["machines"] + 1)
            ],
            batch_size=BATCH,
        )
        self.seed_live_sessions(re_pool, machines[: options["sessions"]], now)
        if options["history_sessions"] is not None:
            withdrawn = self.seed_history_sessions(re_pool, machines, options["history_sessions"], days, now)
        else:
            withdrawn = self.seed_history(re_pool, machines, days, now)

        audit_events = options["audit_events"]
        if audit_events is None:
            audit_events = max(
                MINIMUM_AUDIT_EVENTS_PER_DAY * days,
                (options["members"] + options["machines"]) * AUDIT_EVENTS_PER_MEMBER_OR_MACHINE_PER_YEAR * days // 365,
            )
        self.seed_audit_history(
            organization=organization,
            managers=[owner, people["admin@demo.example"]],
            memberships=memberships,
            removed=removed,
            pools=(kse, re_pool),
            machines=machines,
            withdrawn=withdrawn,
            count=audit_events,
            since=max(now - timedelta(days=days), starts),
            now=now,
        )

        # A second organization, so the demo owner sees the organization switcher.
        partners = create_organization(name=DEMO_PARTNER_ORGANIZATION, owner=people["admin@demo.example"])
        Membership.objects.create(organization=partners, user=owner, role=Role.ADMIN)
        LicensePool.objects.create(
            organization=partners,
            product=Product.RE,
            quota=3,
            machine_quota=3,
            starts_at=starts,
            expires_at=expires,
            lease_seconds=300,
        )
        if connection.vendor == "postgresql":
            # Fresh tables have no statistics until autovacuum comes by; without them the planner
            # takes a million rows for none, and the first pages after seeding would show that.
            with connection.cursor() as cursor:
                for model in (EngineSession, AuditEvent, Membership, Machine, QueueTicket):
                    cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
        return organization

    def moment_between(self, start, end):
        return start + timedelta(seconds=self.random.uniform(0, max(0.0, (end - start).total_seconds())))

    def seed_removed_members(self, organization, owner, members, starts, now, password):
        """One former member per fifty: the members page lists who was removed, when and by whom."""
        User = get_user_model()
        former = User.objects.bulk_create(
            [
                User(email=f"former-{n:05d}@demo.example", name=f"Former Member {n}", password=password)
                for n in range(1, members // 50 + 1)
            ],
            batch_size=BATCH,
        )
        removed = []
        for user in former:
            joined = self.moment_between(starts, now - timedelta(days=2))
            removed.append(
                Membership(
                    organization=organization,
                    user=user,
                    role=Role.MEMBER,
                    joined_at=joined,
                    removed_at=self.moment_between(joined, now - timedelta(days=1)),
                    removed_by=owner,
                )
            )
        return Membership.objects.bulk_create(removed, batch_size=BATCH)

    def seed_pending_invitations(self, organization, owner, members, now):
        """One pending invitation per two hundred members, so the list is not empty at any size."""
        Invitation.objects.bulk_create(
            [
                Invitation(
                    organization=organization,
                    email=f"invitee-{n:05d}@demo.example",
                    invited_by=owner,
                    created_at=(sent := now - timedelta(hours=self.random.randint(1, 6 * 24))),
                    sent_at=sent,
                    expires_at=sent + timedelta(days=7),
                )
                for n in range(1, members // 200 + 2)
            ],
            batch_size=BATCH,
        )

    def seed_live_sessions(self, pool, machines, now):
        EngineSession.objects.bulk_create(
            [
                EngineSession(
                    pool=pool,
                    machine=machine,
                    user=machine.user,
                    hostname=machine.hostname,
                    engine_version="10.2.0",
                    started_at=now - timedelta(minutes=5 + n % 120),
                    last_heartbeat_at=now,
                    lease_expires_at=now + timedelta(seconds=pool.lease_seconds),
                )
                for n, machine in enumerate(machines)
            ],
            batch_size=BATCH,
        )

    def seed_history(self, pool, machines, days, now):
        """Ended sessions over `days` days, never more at once than the quota (as the portal would
        have enforced), busier on weekdays, some running past midnight."""
        if not days or not machines:
            return []
        start_of_history = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
        candidates = []
        for day in range(days + 1):
            day_start = start_of_history + timedelta(days=day)
            weekday = day_start.weekday() < 5
            for _ in range(self.random.randint(8, 14) * pool.quota // 5 if weekday else self.random.randint(1, 4)):
                started = day_start + timedelta(minutes=self.random.randint(6 * 60, 20 * 60))
                candidates.append((started, timedelta(minutes=self.random.randint(10, 240))))
            # Nightly runs that cross midnight.
            for _ in range(self.random.randint(1, 3)):
                started = day_start + timedelta(hours=23, minutes=self.random.randint(0, 50))
                candidates.append((started, timedelta(minutes=self.random.randint(20, 180))))
            # Some weeknights a regression suite starts more jobs than there are licenses: the
            # line and the refusals the usage page shows.
            if weekday and self.random.random() < 0.3:
                for _ in range(pool.quota + self.random.randint(2, 6)):
                    started = day_start + timedelta(hours=2, minutes=self.random.randint(0, 10))
                    candidates.append((started, timedelta(minutes=self.random.randint(15, 45))))
        candidates.sort()
        running_ends = []
        spans, waits, refused = [], [], []
        for asked, duration in candidates:
            started = asked
            while running_ends and running_ends[0] <= started:
                heapq.heappop(running_ends)
            if len(running_ends) >= pool.quota:
                # The pool is full: an engine that asked to wait (half of them) starts when the first
                # license frees up, if that comes within half an hour; the others are refused.
                first_free = running_ends[0]
                if self.random.random() < 0.5 or first_free - asked > QUEUE_WAIT_LIMIT:
                    refused.append(asked)
                    continue
                started = heapq.heappop(running_ends)
                waits.append((asked, started))
            ended = started + duration
            if ended >= now - timedelta(minutes=10):
                if waits and waits[-1][1] == started:
                    waits.pop()
                continue
            heapq.heappush(running_ends, ended)
            spans.append((started, ended))
        self.insert_demand(pool, machines, waits, refused)
        return self.insert_history(pool, machines, spans)

    def seed_history_sessions(self, pool, machines, count, days, now):
        """Exactly `count` ended sessions over the last `days` days (the usage page's large case),
        shaped like seed_history: busier on weekday working hours, quieter at night and weekends.
        Their lengths are chosen so that they usually fit half the quota; when the pool is full an
        engine waits for the first license to come free, as a queued engine would."""
        if not count:
            return []
        start_of_history = now - timedelta(days=days)
        last_end = now - timedelta(minutes=10)
        weights = []
        for day in range(days):
            day_start = start_of_history + timedelta(days=day)
            weights.append(5 if day_start.weekday() < 5 else 1)
        per_day = [count * weight // sum(weights) for weight in weights]
        for day in self.random.sample(range(days), k=min(days, count - sum(per_day))):
            per_day[day] += 1
        while sum(per_day) < count:  # more left over than days: spread the rest round the days
            per_day[self.random.randrange(days)] += 1
        busiest = max(per_day)
        # Working hours are 14 of the day's 24: the average run fills half the quota at the busiest.
        mean_seconds = max(1.0, min(4 * 3600, 0.5 * pool.quota * 14 * 3600 / busiest))
        starts = []
        for day, sessions in enumerate(per_day):
            day_start = start_of_history + timedelta(days=day)
            for _ in range(sessions):
                if self.random.random() < 0.85:
                    offset = self.random.uniform(6 * 3600, 20 * 3600)  # working hours
                else:
                    offset = self.random.uniform(0, 24 * 3600)  # nightly and odd-hour runs
                starts.append(day_start + timedelta(seconds=offset))
        starts.sort()
        running_ends = []
        spans, waits = [], []
        for started in starts:
            started = min(started, last_end - timedelta(seconds=2))
            while running_ends and running_ends[0] <= started:
                heapq.heappop(running_ends)
            if len(running_ends) >= pool.quota:
                asked, started = started, max(started, heapq.heappop(running_ends))
                waits.append((asked, started))
            duration = timedelta(seconds=self.random.uniform(0.2, 1.8) * mean_seconds)
            ended = min(started + duration, last_end)
            if ended <= started:  # squeezed against the end of the history
                started, ended = last_end - timedelta(seconds=2), last_end - timedelta(seconds=1)
            heapq.heappush(running_ends, ended)
            spans.append((started, ended))
        self.insert_demand(pool, machines, waits, [])
        return self.insert_history(pool, machines, spans)

    def insert_demand(self, pool, machines, waits, refused):
        """What the usage page shows of demand the pool did not meet at once: the engines that waited
        in line, (asked, granted) each, as used-up queue tickets (not linked to their sessions) and
        counted per hour by wait, and the moments activations were refused, counted per hour."""
        rows = []
        for asked, granted in waits:
            machine = self.random.choice(machines)
            rows.append(
                (
                    generate_ticket_id(),
                    pool.pk,
                    machine.user_id,
                    machine.machine_id,
                    machine.hostname,
                    asked,
                    granted,
                    granted + timedelta(seconds=32),
                    asked + QUEUE_WAIT_LIMIT,
                    granted,
                    TicketOutcome.GRANTED,
                )
            )
        insert_rows(
            QueueTicket,
            [
                "public_id",
                "pool",
                "user",
                "machine_id",
                "hostname",
                "joined_at",
                "last_polled_at",
                "poll_before",
                "expires_at",
                "ended_at",
                "outcome",
            ],
            rows,
        )
        waits_per_hour = Counter(
            (_hour(granted), wait_resolution((granted - asked).total_seconds())) for asked, granted in waits
        )
        QueueWaitHour.objects.bulk_create(
            [
                QueueWaitHour(pool=pool, hour=hour, wait_seconds=seconds, waits=count)
                for (hour, seconds), count in sorted(waits_per_hour.items())
            ],
            batch_size=BATCH,
        )
        refusals = Counter(_hour(moment) for moment in refused)
        QuotaRefusalHour.objects.bulk_create(
            [QuotaRefusalHour(pool=pool, hour=hour, refusals=count) for hour, count in sorted(refusals.items())]
        )

    def insert_history(self, pool, machines, spans):
        """Write the ended sessions; returns (public id, machine, ended_at) of those an admin ended."""
        lease = timedelta(seconds=pool.lease_seconds)
        rows = []
        withdrawn = []
        for started, ended in spans:
            machine = self.random.choice(machines)
            reason = self.random.choice(HISTORY_END_REASONS)
            public_id = generate_session_id()
            if reason == EndReason.EXPIRED:
                # A lapsed lease is recorded as ending when the lease ran out.
                last_heartbeat, lease_end = ended - lease, ended
            else:
                last_heartbeat, lease_end = ended, ended + lease
            rows.append(
                (
                    public_id,
                    pool.pk,
                    machine.pk,
                    machine.user_id,
                    machine.hostname,
                    "10.2.0",
                    started,
                    max(started, last_heartbeat),
                    lease_end,
                    ended,
                    reason,
                )
            )
            if reason == EndReason.WITHDRAWN:
                withdrawn.append((public_id, machine, ended))
        insert_rows(
            EngineSession,
            [
                "public_id",
                "pool",
                "machine",
                "user",
                "hostname",
                "engine_version",
                "started_at",
                "last_heartbeat_at",
                "lease_expires_at",
                "ended_at",
                "end_reason",
            ],
            rows,
        )
        return withdrawn

    def seed_audit_history(
        self, *, organization, managers, memberships, removed, pools, machines, withdrawn, count, since, now
    ):
        """`count` audit events between `since` and now, of the kinds and shapes the portal writes:
        each member's invitation and acceptance when they joined, each removal, and a weighted mix
        of refusals, ended sessions, keys, machines, roles and licenses on working days."""
        re_pool = pools[1]
        events = []

        def event(moment, actor, action, target_type="", target_id="", label="", before=None, after=None):
            events.append(
                (
                    organization.pk,
                    actor.pk,
                    actor.email,
                    action,
                    target_type,
                    str(target_id),
                    label,
                    before,
                    after,
                    f"10.{self.random.randint(0, 3)}.{self.random.randint(0, 255)}.{self.random.randint(1, 254)}",
                    moment,
                )
            )

        for pool in pools:
            event(
                since,
                managers[0],
                Action.POOL_PROVISIONED,
                "licensepool",
                pool.pk,
                str(pool),
                None,
                pool_terms(pool) | {"sessions_ended": 0},
            )
        for membership in [*memberships, *removed]:
            if len(events) >= count or membership.joined_at < since:
                continue
            email = membership.user.email
            inviter = self.random.choice(managers)
            invited_at = max(since, membership.joined_at - timedelta(minutes=self.random.randint(5, 3 * 24 * 60)))
            event(invited_at, inviter, Action.MEMBER_INVITED, "", "", email, None, {"email": email, "role": "member"})
            event(
                membership.joined_at,
                membership.user,
                Action.INVITATION_ACCEPTED,
                "membership",
                membership.pk,
                email,
                None,
                {"role": "member"},
            )
        for membership in removed:
            if len(events) >= count or membership.removed_at < since:
                continue
            event(
                membership.removed_at,
                membership.removed_by,
                Action.MEMBER_REMOVED,
                "membership",
                membership.pk,
                membership.user.email,
                {"role": "member"},
                {"kse_seats_revoked": 0, "sessions_ended": 0, "machines_deactivated": 0, "api_keys_revoked": 0},
            )
        # Each session an admin ended is audited once, in no particular order.
        withdrawn = [item for item in withdrawn if item[2] >= since]
        self.random.shuffle(withdrawn)

        kinds = [action for action, _weight in AUDIT_MIX]
        weights = [weight for _action, weight in AUDIT_MIX]
        people = [membership.user for membership in memberships] or managers
        remaining = max(0, count - len(events))
        for action in self.random.choices(kinds, weights=weights, k=remaining):
            moment = self.working_moment(since, now)
            manager = self.random.choice(managers)
            person = self.random.choice(people)
            machine = self.random.choice(machines) if machines else None
            if action == Action.ACTIVATION_REFUSED:
                if machine is None:
                    continue
                event(
                    moment,
                    person,
                    action,
                    "",
                    "",
                    f"RE on {machine.machine_id}",
                    None,
                    {
                        "code": "session_quota_exceeded",
                        "message": f"License quota exceeded: {re_pool.quota} of {re_pool.quota} Katalon Runtime Engine "
                        f"licenses are in use in {organization.name}. Release a session or ask an admin for more "
                        "licenses.",
                        "product": "RE",
                        "machine_id": machine.machine_id,
                    },
                )
            elif action == Action.SESSION_ENDED:
                if not withdrawn:
                    continue
                public_id, ended_machine, ended_at = withdrawn.pop()
                event(
                    ended_at,
                    manager,
                    action,
                    "enginesession",
                    "",
                    f"{public_id} on {ended_machine.machine_id} (RE)",
                    None,
                    {"reason": EndReason.WITHDRAWN},
                )
            elif action == Action.MACHINE_DEACTIVATED:
                if machine is None:
                    continue
                event(
                    moment,
                    manager,
                    action,
                    "machine",
                    machine.pk,
                    f"{machine.machine_id} (RE)",
                    None,
                    {"sessions_ended": self.random.choice([0, 0, 1])},
                )
            elif action in (Action.API_KEY_CREATED, Action.API_KEY_REVOKED):
                name = self.random.choice(["CI agents", "Nightly regression", "Release pipeline", "Laptop"])
                prefix = "kat_" + "".join(self.random.choices("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", k=8))
                event(
                    moment,
                    person,
                    action,
                    "apikey",
                    "",
                    f"API key {name} ({prefix}…) of {person.email}",
                    None,
                    {
                        "name": name,
                        "prefix": prefix,
                        "organization": organization.public_id,
                        "expires_at": None,
                    },
                )
            elif action == Action.MEMBER_ROLE_CHANGED:
                before, after = self.random.choice([("member", "admin"), ("admin", "member")])
                event(moment, manager, action, "membership", "", person.email, {"role": before}, {"role": after})
            elif action == Action.INVITATION_RESENT:
                email = f"invitee-{self.random.randint(1, 99999):05d}@demo.example"
                event(
                    moment,
                    manager,
                    action,
                    "invitation",
                    "",
                    email,
                    None,
                    {"expires_at": (moment + timedelta(days=7)).isoformat()},
                )
            elif action == Action.INVITATION_REVOKED:
                email = f"invitee-{self.random.randint(1, 99999):05d}@demo.example"
                event(moment, manager, action, "invitation", "", email)
            elif action in (Action.LICENSE_GRANTED, Action.LICENSE_REVOKED):
                event(moment, manager, action, "licenseduser", "", f"{person.email} (KSE)")
            elif action == Action.OFFLINE_LICENSE_CREATED:
                if machine is None:
                    continue
                until = (moment + timedelta(days=self.random.choice([7, 30, 90]))).date()
                event(
                    moment, manager, action, "offlinelicense", "", f"{machine.machine_id} (RE) until {until:%Y-%m-%d}"
                )
        insert_rows(
            AuditEvent,
            [
                "organization",
                "actor",
                "actor_label",
                "action",
                "target_type",
                "target_id",
                "target_label",
                "before",
                "after",
                "ip_address",
                "created_at",
            ],
            sorted(events, key=lambda row: row[-1]),
        )

    def working_moment(self, since, now):
        """A moment between `since` and now, mostly in working hours on weekdays."""
        for _ in range(10):
            moment = self.moment_between(since, now)
            if moment.weekday() < 5 and 7 <= moment.hour < 20:
                return moment
        return moment
