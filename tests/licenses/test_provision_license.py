from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from licenses.models import LicensePool
from organizations.models import AuditEvent
from sessions_app.models import EndReason, EngineSession
from tests import factories


def provision(*args):
    out = StringIO()
    call_command("provision_license", *args, stdout=out)
    return out.getvalue()


def test_it_creates_a_pool_and_says_what_it_did(organization):
    """Dates are days in UTC: the start at midnight, the expiry at the end of its day."""
    output = provision(
        organization.public_id, "--product", "RE", "--quota", "10", "--starts", "2026-01-01", "--expires", "2026-12-31"
    )
    pool = LicensePool.objects.get(organization=organization, product="RE")
    assert (pool.quota, pool.machine_quota) == (10, 10)
    assert pool.starts_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert pool.expires_at == datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert output.startswith(f"Created the RE pool of Acme QA ({organization.public_id}): quota 10, machine quota 10")
    assert AuditEvent.objects.filter(action="pool.provisioned").count() == 1


def test_the_default_expiry_is_one_year_from_the_start(organization):
    """Without --expires a new pool runs to the end of the day before the start's anniversary."""
    provision(organization.public_id, "--product", "KSE", "--quota", "5", "--starts", "2026-03-15")
    pool = LicensePool.objects.get()
    assert pool.expires_at == datetime(2027, 3, 14, 23, 59, 59, tzinfo=UTC)


def test_a_start_in_the_last_year_there_is_runs_to_its_last_day(organization):
    """A start in 9999 has no anniversary: the pool runs to 9999-12-31 instead of failing."""
    provision(organization.public_id, "--product", "RE", "--quota", "5", "--starts", "9999-06-01")
    assert LicensePool.objects.get().expires_at == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def test_every_option_is_applied(organization):
    """Machine quota, lease length and machine idle limit are set from their options."""
    provision(
        organization.public_id,
        "--product=RE",
        "--quota=4",
        "--machine-quota=8",
        "--lease-seconds=120",
        "--machine-idle-days=7",
    )
    pool = LicensePool.objects.get()
    assert (pool.machine_quota, pool.lease_seconds, pool.machine_idle_days) == (8, 120, 7)


def test_lowering_the_quota_reports_the_sessions_it_ended(re_pool):
    """A renewal with a smaller quota ends the newest sessions and says how many."""
    old, new = (
        factories.EngineSessionFactory(pool=re_pool, started_at=timezone.now() - timedelta(minutes=m)) for m in (5, 1)
    )
    output = provision(re_pool.organization.public_id, "--product", "RE", "--quota", "1")
    assert "Updated the RE pool" in output
    assert "Ended 1 sessions over the new quota (reason quota_reduced)." in output
    assert EngineSession.objects.get(pk=new.pk).end_reason == EndReason.QUOTA_REDUCED
    assert EngineSession.objects.get(pk=old.pk).is_live


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0000000000", "--product", "RE", "--quota", "3"], "Unknown organization: 0000000000."),
        (["{org}", "--product", "XYZ", "--quota", "3"], "Unknown product 'XYZ': choose KSE or RE."),
        (["{org}", "--product", "RE", "--quota", "-1"], "The quota cannot be negative."),
        (["{org}", "--product", "RE", "--quota", "many"], "'many' is not a whole number."),
        (["{org}", "--product", "RE", "--quota", "3", "--expires", "31/12/2026"], "--expires: '31/12/2026' is not"),
        (["{org}", "--product", "RE", "--quota", "3", "--starts", "2026-02-30"], "--starts: '2026-02-30' is not"),
        (["{org}", "--product", "RE", "--quota", "3", "--machine-quota", "-5"], "The machine quota cannot be negative"),
        (["{org}", "--product", "RE", "--quota", "3", "--lease-seconds", "5"], "at least 30 seconds"),
        (["{org}", "--product", "RE", "--quota", "99999999999"], "The quota must be at most 2147483647."),
        (["{org}", "--product", "RE", "--quota", "3", "--machine-quota", "99999999999"], "at most 2147483647"),
        (["{org}", "--product", "RE", "--quota", "3", "--lease-seconds", "99999999999"], "at most 2147483647 seconds"),
        (["{org}", "--product", "RE", "--quota", "3", "--machine-idle-days", "99999999999"], "at most 36500 days"),
        (
            ["{org}", "--product", "RE", "--quota", "3", "--expires", "9999-12-31T23:59:59-05:00"],
            "--expires: '9999-12-31T23:59:59-05:00' is outside the dates",
        ),
        (
            ["{org}", "--product", "RE", "--quota", "3", "--starts", "2027-01-01", "--expires", "2026-01-01"],
            "end after",
        ),
    ],
)
def test_bad_arguments_are_one_line_and_change_nothing(organization, args, message):
    """Each mistake is a CommandError of one line; no pool and no audit event are written."""
    args = [arg.replace("{org}", organization.public_id) for arg in args]
    with pytest.raises(CommandError) as refused:
        provision(*args)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not LicensePool.objects.exists()
    assert not AuditEvent.objects.filter(action="pool.provisioned").exists()


def test_a_machine_allow_list_limits_which_machines_may_take_licenses(organization):
    """Patterns are given comma-separated; an empty value lifts the restriction again."""
    output = provision(
        organization.public_id, "--product", "RE", "--quota", "3", "--machine-allow-list", "ci-*, build-??.corp"
    )
    pool = LicensePool.objects.get()
    assert pool.allow_patterns() == ["ci-*", "build-??.corp"]
    assert pool.allows_machine("ci-runner-7") and pool.allows_machine("build-01.corp")
    assert not pool.allows_machine("laptop-1")
    assert "Only machines matching ci-*, build-??.corp may take licenses." in output
    provision(organization.public_id, "--product", "RE", "--quota", "3", "--machine-allow-list", "")
    pool.refresh_from_db()
    assert pool.allows_machine("laptop-1")


def test_a_bad_machine_pattern_is_refused_and_changes_nothing(organization):
    """A pattern no machine id could match is named in a one-line error; the pool is not created."""
    with pytest.raises(CommandError, match=r"Bad machine-id pattern 'lab machine'"):
        provision(organization.public_id, "--product", "RE", "--quota", "3", "--machine-allow-list", "lab machine")
    assert not LicensePool.objects.exists()
