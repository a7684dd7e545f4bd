from datetime import UTC, date, datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from licenses import actions
from licenses.errors import LicenseRefusal
from licenses.models import Product, end_of_day, is_valid_machine_id
from organizations.models import Organization


def _moment(value: str, *, option: str, end_of_the_day: bool) -> datetime:
    """A DATE (YYYY-MM-DD) or an ISO 8601 datetime; a bare date starts at midnight UTC, or for an
    expiry runs to that day's last second."""
    try:
        parsed = parse_date(value) or parse_datetime(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise CommandError(f"{option}: {value!r} is not a date (YYYY-MM-DD) or an ISO 8601 datetime.")
    if isinstance(parsed, datetime):
        try:
            return parsed.astimezone(UTC) if timezone.is_aware(parsed) else parsed.replace(tzinfo=UTC)
        except OverflowError:
            raise CommandError(f"{option}: {value!r} is outside the dates the portal can store.") from None
    assert isinstance(parsed, date)
    return end_of_day(parsed) if end_of_the_day else datetime.combine(parsed, time.min, tzinfo=UTC)


def _count(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a whole number.") from None


class Command(BaseCommand):
    help = (
        "Create or change an organization's license pool for one product (a purchase or renewal). "
        "Lowering an RE quota below what is in use ends the newest sessions with reason quota_reduced; "
        "a KSE quota below its licensed users is refused, naming how many to revoke first."
    )

    def add_arguments(self, parser):
        parser.add_argument("org_id", help="The organization's id, as the portal shows it.")
        parser.add_argument("--product", required=True, help="KSE or RE.")
        parser.add_argument("--quota", required=True, help="Concurrent online licenses (KSE: licensed users).")
        parser.add_argument("--machine-quota", help="Registered machines; defaults to the quota.")
        parser.add_argument("--starts", help="Start date (YYYY-MM-DD, UTC); defaults to now for a new pool.")
        parser.add_argument("--expires", help="Last day (YYYY-MM-DD, UTC); defaults to one year from the start.")
        parser.add_argument("--lease-seconds", help="How long a session lives without a heartbeat (at least 30).")
        parser.add_argument("--machine-idle-days", help="Deregister machines idle this many days; 0 keeps them.")
        parser.add_argument(
            "--machine-allow-list",
            help="Comma-separated machine-id patterns (* and ? wildcards) allowed to take licenses; '' allows all.",
        )

    def handle(self, *args, org_id, product, quota, machine_quota, starts, expires, lease_seconds, **options):
        machine_idle_days = options["machine_idle_days"]
        if product not in Product.values:
            raise CommandError(f"Unknown product {product!r}: choose KSE or RE.")
        quota = _count(quota)
        if quota < 0:
            raise CommandError("The quota cannot be negative.")
        organization = Organization.objects.filter(public_id=org_id).first()
        if organization is None:
            raise CommandError(f"Unknown organization: {org_id}.")
        try:
            result = actions.provision_pool(
                organization=organization,
                product=product,
                quota=quota,
                machine_quota=None if machine_quota is None else _count(machine_quota),
                starts_at=None if starts is None else _moment(starts, option="--starts", end_of_the_day=False),
                expires_at=None if expires is None else _moment(expires, option="--expires", end_of_the_day=True),
                lease_seconds=None if lease_seconds is None else _count(lease_seconds),
                machine_idle_days=None if machine_idle_days is None else _count(machine_idle_days),
                machine_allow_list=_allow_list(options["machine_allow_list"]),
            )
        except LicenseRefusal as error:
            raise CommandError(error.message) from None
        pool = result.pool
        idle = (
            f"machines idle {pool.machine_idle_days} days deregistered" if pool.machine_idle_days else "no idle limit"
        )
        self.stdout.write(
            f"{'Created' if result.created else 'Updated'} the {pool.product} pool of {organization.name} "
            f"({organization.public_id}): quota {pool.quota}, machine quota {pool.machine_quota}, "
            f"{pool.starts_at:%Y-%m-%d %H:%M} to {pool.expires_at:%Y-%m-%d %H:%M} UTC, "
            f"{pool.lease_seconds} s leases, {idle}."
        )
        if pool.machine_allow_list:
            self.stdout.write(f"Only machines matching {', '.join(pool.allow_patterns())} may take licenses.")
        if result.sessions_ended:
            self.stdout.write(f"Ended {result.sessions_ended} sessions over the new quota (reason quota_reduced).")


def _allow_list(value):
    """The pool stores one pattern per line; the command takes them comma-separated."""
    if value is None:
        return None
    patterns = [pattern.strip() for pattern in value.split(",") if pattern.strip()]
    for pattern in patterns:
        if len(pattern) > 128 or not is_valid_machine_id(pattern.replace("*", "x").replace("?", "x")):
            raise CommandError(
                f"Bad machine-id pattern {pattern[:40]!r}: use A-Z a-z 0-9 . _ : - and the wildcards * and ?."
            )
    return "\n".join(patterns)
