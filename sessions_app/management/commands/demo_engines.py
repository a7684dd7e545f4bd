import time

from django.core.management.base import BaseCommand, CommandError

from licenses.errors import LicenseRefusal
from licenses.models import LicensePool, Product
from organizations.management.commands.seed_demo import DEMO_ORGANIZATION
from organizations.models import Organization
from sessions_app import actions
from sessions_app.models import EngineSession, Machine

# The seeded CI agents' hosts; sessions on other hosts (someone trying the API) are left alone.
DEMO_HOST_SUFFIX = ".demo.example"
# Two engines on one machine now and then show why the session id and the version are listed.
ENGINE_VERSIONS = ["10.2.0", "10.1.3", "10.2.0", "9.7.2"]
# An engine that an admin ended, or that lapsed while the demo was stopped, comes back only after
# this long: ending a session visibly frees its license, as it would on a real CI agent.
RESTART_AFTER_SECONDS = 300


class Command(BaseCommand):
    help = (
        "Keep a few demo Runtime Engines running against the demo organization (seed_demo): heartbeat "
        "their sessions through the engine actions the API uses, and start new ones on the demo "
        "machines when fewer are live. For `./dev run` only; never point it at real data."
    )

    def add_arguments(self, parser):
        parser.add_argument("--engines", type=int, default=4, help="how many demo engines to keep running")
        parser.add_argument("--once", action="store_true", help="one round of heartbeats and starts, then exit")

    def handle(self, *args, engines, once, **options):
        if engines < 0:
            raise CommandError("--engines must be 0 or more.")
        organization = Organization.objects.filter(name=DEMO_ORGANIZATION).first()
        if organization is None:
            raise CommandError(f"No demo organization {DEMO_ORGANIZATION!r}: run seed_demo first.")
        pool = LicensePool.objects.filter(organization=organization, product=Product.RE).first()
        if pool is None:
            raise CommandError(f"{DEMO_ORGANIZATION} has no Runtime Engine pool.")
        last_start = None
        while True:
            may_start = last_start is None or time.monotonic() - last_start >= RESTART_AFTER_SECONDS
            kept, started = self.round(organization, pool, engines, may_start=may_start)
            if started:
                last_start = time.monotonic()
            if options["verbosity"] > 1:
                self.stdout.write(f"Demo engines: {kept} heartbeating, {started} started.")
            if once:
                self.stdout.write(f"{kept} demo engines heartbeating, {started} started.")
                return
            time.sleep(pool.heartbeat_interval_seconds)

    def round(self, organization, pool, engines, *, may_start):
        live = list(
            EngineSession.objects.live()
            .filter(pool=pool, hostname__endswith=DEMO_HOST_SUFFIX)
            .select_related("user")
            .order_by("started_at")
        )
        kept = 0
        for session in live:
            try:
                actions.heartbeat(user=session.user, session_id=session.public_id, organization=organization)
                kept += 1
            except LicenseRefusal:
                pass  # ended by an admin meanwhile: this engine has stopped
        started = 0
        if may_start and kept < engines:
            started = self.start(organization, pool, engines - kept, busy={s.machine_id for s in live})
        return kept, started

    def start(self, organization, pool, wanted, *, busy):
        """Start up to `wanted` engines on demo machines that have none, while licenses are free
        (a refusal would be audited, and the demo's log should show real events only)."""
        machines = (
            Machine.objects.filter(pool=pool, hostname__endswith=DEMO_HOST_SUFFIX, user__isnull=False)
            .registered()
            .exclude(pk__in=busy)
            .select_related("user")
            .order_by("machine_id")
        )
        started = 0
        for n, machine in enumerate(machines[:wanted]):
            if pool.usage().available < 1:
                break
            try:
                actions.activate(
                    api_key=None,
                    user=machine.user,
                    product=Product.RE,
                    machine_id=machine.machine_id,
                    org_id=organization.public_id,
                    hostname=machine.hostname,
                    engine_version=ENGINE_VERSIONS[n % len(ENGINE_VERSIONS)],
                )
                started += 1
            except LicenseRefusal:
                break
        return started
