import heapq
import random
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from licenses.models import LicensedUser, LicensePool, Product
from organizations.actions import create_organization
from organizations.models import Membership, Organization, Role
from sessions_app.models import EndReason, EngineSession, Machine, generate_session_id

DEMO_ORGANIZATION = "Demo QA"
DEMO_PARTNER_ORGANIZATION = "Globex Partners"
DEMO_PASSWORD = "demo-password"
DEMO_PEOPLE = [
    ("owner@demo.example", "Olivia Owner", Role.OWNER),
    ("admin@demo.example", "Adam Admin", Role.ADMIN),
    ("member@demo.example", "Mia Member", Role.MEMBER),
]
BATCH = 5_000


class Command(BaseCommand):
    help = (
        "Creates demo data: the 'Demo QA' organization with KSE and RE pools, members, machines, live "
        "sessions and a history of ended ones. With larger sizes, data for benchmarks."
    )

    def add_arguments(self, parser):
        parser.add_argument("--members", type=int, default=12, help="members besides the three demo accounts")
        parser.add_argument("--machines", type=int, default=8, help="registered RE machines")
        parser.add_argument("--sessions", type=int, default=4, help="live RE sessions")
        parser.add_argument("--history-days", type=int, default=30, help="days of ended sessions")
        parser.add_argument("--once", action="store_true", help="do nothing when the demo data is already there")
        parser.add_argument("--seed", type=int, default=42, help="random seed, for repeatable data")

    def handle(self, *args, **options):
        for name in ("members", "machines", "sessions", "history_days"):
            if options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} cannot be negative.")
        if options["sessions"] > options["machines"]:
            raise CommandError("--sessions cannot exceed --machines: each live session runs on a registered machine.")
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
        password = make_password(DEMO_PASSWORD)
        people = {}
        for email, name, _role in DEMO_PEOPLE:
            people[email] = User.objects.create(email=email, name=name, password=password)
        owner = people[DEMO_PEOPLE[0][0]]
        organization = create_organization(name=DEMO_ORGANIZATION, owner=owner)
        for email, _name, role in DEMO_PEOPLE[1:]:
            Membership.objects.create(organization=organization, user=people[email], role=role)

        # Hashing a password per member would take minutes at benchmark sizes; these accounts
        # are for lists and figures, so they get one shared unusable password.
        extra = User.objects.bulk_create(
            [
                User(email=f"member-{n:05d}@demo.example", name=f"Demo Member {n}", password=make_password(None))
                for n in range(1, options["members"] + 1)
            ],
            batch_size=BATCH,
        )
        Membership.objects.bulk_create(
            [Membership(organization=organization, user=user, role=Role.MEMBER) for user in extra], batch_size=BATCH
        )
        members = [*people.values(), *extra]

        starts, expires = now - timedelta(days=max(options["history_days"], 1) + 30), now + timedelta(days=335)
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
            LicensedUser.objects.create(pool=kse, user=user, granted_by=owner)

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
        self.seed_history(re_pool, machines, options["history_days"], now)

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
        return organization

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
            return
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
        candidates.sort()
        reasons = [EndReason.RELEASED] * 8 + [EndReason.EXPIRED, EndReason.WITHDRAWN]
        running_ends = []
        rows = []
        for started, duration in candidates:
            ended = started + duration
            if ended >= now - timedelta(minutes=10):
                continue
            while running_ends and running_ends[0] <= started:
                heapq.heappop(running_ends)
            if len(running_ends) >= pool.quota:
                continue  # the portal would have refused this activation
            heapq.heappush(running_ends, ended)
            machine = self.random.choice(machines)
            reason = self.random.choice(reasons)
            rows.append(
                EngineSession(
                    public_id=generate_session_id(),
                    pool=pool,
                    machine=machine,
                    user=machine.user,
                    hostname=machine.hostname,
                    engine_version="10.2.0",
                    started_at=started,
                    last_heartbeat_at=ended,
                    lease_expires_at=ended + timedelta(seconds=pool.lease_seconds),
                    ended_at=ended,
                    end_reason=reason,
                )
            )
        EngineSession.objects.bulk_create(rows, batch_size=BATCH)
