import os

import pytest
from django.core.cache import caches
from django.db import connection
from django.test.utils import override_settings

from sessions_app import ratelimit
from tests import factories

pytest_plugins = ["tests.reliability"]

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_HOW = (
    "needs PostgreSQL: run with DATABASE_URL=postgres://postgres@127.0.0.1:5432/katalon_admin "
    "(the README's test command does this when PostgreSQL is up)"
)


def pytest_collection_modifyitems(config, items):
    """PostgreSQL-only tests run in the PostgreSQL pass. On SQLite they skip with how to enable
    them; in CI the PostgreSQL pass runs them, so the SQLite pass leaves them out instead."""
    if connection.vendor == "postgresql":
        return
    postgres_only = [item for item in items if item.get_closest_marker("postgres")]
    if IN_CI:
        for item in postgres_only:
            items.remove(item)
        config.hook.pytest_deselected(items=postgres_only)
    else:
        for item in postgres_only:
            item.add_marker(pytest.mark.skip(reason=POSTGRES_HOW))


def pytest_sessionfinish(session, exitstatus):
    # In CI every service is provided: a skipped test is a test that could not fail.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if IN_CI and reporter is not None and reporter.stats.get("skipped"):
        reporter.write_line("CI: skipped tests are failures here (every service is provided).", red=True)
        session.exitstatus = 1


@pytest.fixture(autouse=True, scope="session")
def _test_settings():
    with override_settings(
        # Production uses hashed static names after collectstatic; tests serve the source files.
        STORAGES={
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        },
        # Factories hash a password per person and tests make hundreds of people; the real
        # hasher's deliberate slowness would dominate the suite's time.
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    ):
        yield


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    """Each test starts with no request counted: the suite's many 401s would otherwise add up to the
    failure limit of the test client's one address. (The default cache is local memory in tests.)"""
    caches["default"].clear()
    ratelimit.reset()


@pytest.fixture
def owner(db):
    return factories.UserFactory(name="Olivia Owner")


@pytest.fixture
def organization(owner):
    return factories.OrganizationFactory(owner=owner, name="Acme QA")


@pytest.fixture
def admin_user(organization):
    return factories.MembershipFactory(organization=organization, role="admin").user


@pytest.fixture
def member_user(organization):
    return factories.MembershipFactory(organization=organization, role="member").user


@pytest.fixture
def other_organization(db):
    return factories.OrganizationFactory(name="Rival Labs")


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def member_client(client, member_user):
    client.force_login(member_user)
    return client
