"""Each refusal is one line on stderr with the contract's code and message, and a sysexits code a CI
script can tell from the wrapped command's: 69 no license, 77 key or license refused, 64 usage,
75 portal unreachable, 76 not the portal."""

import socket

import pytest
from django.utils import timezone

from sessions_app.models import ApiKey, EngineSession
from tests import factories

from .conftest import read_report


def error_lines(process):
    return [line for line in process.stderr.splitlines() if line.startswith("katalon-license: error:")]


def test_no_license_free_fails_at_once_with_69(katalon, portal):
    """Without --wait a full pool refuses at once with the pool's figures, and the command never
    runs; a machine beyond the machine quota is refused the same way."""
    factories.EngineSessionFactory.create_batch(2, pool=portal.pool, user=portal.user)
    child, report_path = katalon.child()
    process = katalon.run("run", "--", *child)

    assert process.process.returncode == 69
    (line,) = error_lines(process)
    assert line.startswith("katalon-license: error: session_quota_exceeded: License quota exceeded: 2 of 2")
    assert not report_path.exists()

    EngineSession.objects.all().delete()
    portal.pool.machine_quota = 2
    portal.pool.save()
    machine_quota = katalon.run("activate", "--machine-id", "a-third-machine")
    assert machine_quota.process.returncode == 69
    assert "machine_quota_exceeded: Machine quota exceeded: 2 of 2" in machine_quota.stderr


def test_a_refused_key_fails_with_77_and_no_key_is_ever_shown(katalon, portal):
    """An unknown or revoked key is refused with 77 and invalid_api_key; one that cannot go into a
    header is a usage error. --api-key overrides the environment. Verbose output and errors never
    show a key (the fixture checks every line of every run)."""
    unknown_key = "kat_" + "x" * 43
    katalon.secrets.append(unknown_key)
    environment = katalon.environment(KATALON_API_KEY=unknown_key)
    unknown = katalon.run("run", "--verbose", "--", "true", environment=environment)
    assert unknown.process.returncode == 77
    (line,) = error_lines(unknown)
    assert "invalid_api_key" in line

    flagged = katalon.run("organizations", "--verbose", "--api-key", portal.raw_key, environment=environment)
    assert flagged.process.returncode == 0, flagged.stderr
    assert "GET /api/v1/engine/organizations -> 200" in flagged.stderr

    unsendable_key = "kat_with a space"
    katalon.secrets.append(unsendable_key)
    unsendable = katalon.run("organizations", environment=katalon.environment(KATALON_API_KEY=unsendable_key))
    assert unsendable.process.returncode == 64
    assert "API key holds spaces" in unsendable.stderr

    ApiKey.objects.update(revoked_at=timezone.now())
    revoked = katalon.run("activate", "--verbose")
    assert revoked.process.returncode == 77
    assert "invalid_api_key" in revoked.stderr


def test_not_licensed_there_fails_with_77(katalon, portal):
    """KSE without a seat (not_licensed), an organization the key does not reach
    (organization_not_found), an organization without licenses for the product (no_license_pool)."""
    factories.LicensePoolFactory(organization=portal.organization, product="KSE", quota=2)
    not_licensed = katalon.run("run", "--product", "KSE", "--", "true")
    assert not_licensed.process.returncode == 77
    assert "not_licensed" in not_licensed.stderr

    unknown_organization = katalon.run("activate", "--org", "0000000000")
    assert unknown_organization.process.returncode == 77
    assert "organization_not_found" in unknown_organization.stderr

    no_re = factories.OrganizationFactory(name="Studio Only")
    factories.MembershipFactory(organization=no_re, user=portal.user)
    no_pool = katalon.run("activate", "--org", no_re.public_id)
    assert no_pool.process.returncode == 77
    assert "no_license_pool" in no_pool.stderr


def test_several_organizations_need_org_and_the_message_lists_them(katalon, portal):
    """A person in several organizations with RE licenses must choose: 64, with each organization's
    id and name in the message; --org picks one."""
    other = factories.OrganizationFactory(name="Rival Labs")
    factories.MembershipFactory(organization=other, user=portal.user)
    factories.LicensePoolFactory(organization=other, product="RE")

    process = katalon.run("activate")
    assert process.process.returncode == 64
    assert "organization_required" in process.stderr
    assert f"{other.public_id} (Rival Labs)" in process.stderr
    assert f"{portal.organization.public_id} (Acme QA)" in process.stderr

    child, report_path = katalon.child()
    assert katalon.run("run", "--org", other.public_id, "--", *child).process.returncode == 0
    assert read_report(report_path)["env"]["KATALON_LICENSE_ORG_ID"] == other.public_id


def test_an_address_that_is_not_the_portal_fails_with_76(katalon, portal):
    """A URL that answers, but not with the engine API (a path that is not the portal's), is named."""
    environment = katalon.environment(KATALON_ADMIN_URL=portal.url + "/not-the-portal")
    process = katalon.run("organizations", environment=environment)
    assert process.process.returncode == 76
    assert "not the engine API" in process.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["run", "--wait", "10x", "--", "true"], "is not a duration"),
        (["run", "--wait", "25h", "--", "true"], "out of range"),
        (["run", "--machine-id", "has space", "--", "true"], "not a valid machine id"),
        (["run", "true"], "put the command after --"),
        (["run", "--"], "no command to run"),
        (["heartbeat", "not-a-session"], "not a valid session id"),
        (["activate", "--product", "XYZ"], "invalid choice"),
        (["organizations", "--", "x"], "only run takes a command after --"),
    ],
)
def test_bad_usage_fails_with_64_before_asking_the_portal(katalon_without_portal, arguments, message):
    process = katalon_without_portal.run(*arguments)
    assert process.process.returncode == 64
    (line,) = error_lines(process)
    assert message in line


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KATALON_ADMIN_URL", None, "set KATALON_ADMIN_URL"),
        ("KATALON_ADMIN_URL", "licenses.example.com", "must be an http:// or https:// URL"),
        ("KATALON_ADMIN_URL", "https://me:secret@licenses.example.com", "must not hold a user name or password"),
        ("KATALON_API_KEY", None, "set KATALON_API_KEY"),
    ],
)
def test_missing_or_bad_configuration_fails_with_64(katalon_without_portal, variable, value, message):
    environment = katalon_without_portal.environment()
    if value is None:
        del environment[variable]
    else:
        environment[variable] = value
    process = katalon_without_portal.run("organizations", environment=environment)
    assert process.process.returncode == 64
    assert message in process.stderr
    assert "secret" not in process.stderr


def test_an_unreachable_portal_fails_with_75_after_retrying_for_the_connect_timeout(katalon_without_portal):
    """Nothing listens: the client retries with backoff for --connect-timeout, then exits 75."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        closed_port = placeholder.getsockname()[1]
    environment = katalon_without_portal.environment(KATALON_ADMIN_URL=f"http://127.0.0.1:{closed_port}")
    process = katalon_without_portal.run("run", "--connect-timeout", "2s", "--", "true", environment=environment)

    assert process.process.returncode == 75
    assert process.stderr.count("retrying in") >= 2
    (line,) = error_lines(process)
    assert "portal_unreachable" in line and "after 2s of retrying" in line
