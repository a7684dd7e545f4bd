"""Limits hold where users meet them: over HTTP, against two gunicorn instances (each of two worker
processes with four threads) sharing one PostgreSQL database, as two web hosts behind a load
balancer would. Every figure goes to the run's "reliability figures" (docs/RELIABILITY.md).

RELIABILITY_REPETITIONS (default 5) sets how often each race is run; a longer run sets it higher."""

import json
import os
from collections import Counter
from functools import partial

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection

from licenses.models import LicensedUser
from organizations.models import User
from sessions_app.models import EngineSession, Machine
from tests import factories
from tests.reliability import record
from tests.servers import Browser, Gunicorn, activate, all_at_once

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

REPETITIONS = int(os.environ.get("RELIABILITY_REPETITIONS", "5"))
ACTIVATIONS = 200
QUOTA = 10
# Activations are spread over this many API keys (of as many members), so no key's rate limit is
# what refuses them.
KEYS = 20
PASSWORD = "reliability-admin-password"


def database_url():
    """pytest-django's test database, which the servers must share with the test."""
    db = connection.settings_dict
    credentials = (db["USER"] or "postgres") + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="module")
def servers(django_db_setup, tmp_path_factory):
    """Two gunicorn instances on the test database: 2 x 2 workers x 4 threads, 16 connections at most."""
    logs = tmp_path_factory.mktemp("gunicorn")
    started = []
    try:
        for name in ("a", "b"):
            started.append(Gunicorn(database_url(), logs / f"{name}.log"))
        yield started
    finally:
        for server in started:
            server.stop()


def no_server_errors(answers, servers):
    failed = [answer for answer in answers if answer.status >= 500 or answer.status == 0]
    logs = "\n".join(server.log_tail(2000) for server in servers)
    assert not failed, f"{len(failed)} server errors, first: {failed[0]}\n{logs}"


def organization_with_keys(product="RE", **pool):
    organization = factories.OrganizationFactory()
    members = [factories.MembershipFactory(organization=organization).user for _ in range(KEYS)]
    pool = factories.LicensePoolFactory(organization=organization, product=product, **pool)
    return pool, [factories.ApiKeyFactory(user=member).raw_key for member in members]


def race(servers, keys, machine_id, count=ACTIVATIONS):
    """`count` activations at once, spread evenly over both servers and every key."""
    return all_at_once(
        [partial(activate, servers[n % len(servers)].port, keys[n % len(keys)], machine_id(n)) for n in range(count)]
    )


def test_200_simultaneous_activations_over_two_servers_get_exactly_the_quota(servers):
    """200 engines start at once against quota 10, half on each server: exactly 10 sessions and 190
    session_quota_exceeded, and no 5xx; every repetition."""
    totals = Counter()
    for repetition in range(REPETITIONS):
        pool, keys = organization_with_keys(quota=QUOTA, machine_quota=ACTIVATIONS)
        answers = race(servers, keys, lambda n, r=repetition: f"agent-{r}-{n}")
        no_server_errors(answers, servers)
        statuses = Counter(answer.status for answer in answers)
        codes = Counter(answer.code for answer in answers if answer.status != 201)
        sessions = EngineSession.objects.filter(pool=pool)
        totals.update(
            requests=len(answers),
            granted=statuses[201],
            refused=statuses[409],
            over_grants=max(0, sessions.count() - QUOTA),
        )
        assert statuses == {201: QUOTA, 409: ACTIVATIONS - QUOTA}, statuses
        assert codes == {"session_quota_exceeded": ACTIVATIONS - QUOTA}, codes
        assert sessions.live().count() == sessions.count() == QUOTA
        granted = {answer.json()["session"]["id"] for answer in answers if answer.status == 201}
        assert granted == set(sessions.values_list("public_id", flat=True))
    record(
        f"{ACTIVATIONS} activations at once against session quota {QUOTA}, two gunicorn instances, x{REPETITIONS}",
        **totals,
        server_errors=0,
    )


def test_200_new_machines_at_once_over_two_servers_register_exactly_the_machine_quota(servers):
    """200 new machines at once against machine quota 10: exactly 10 registered, 190
    machine_quota_exceeded, no 5xx; every repetition."""
    totals = Counter()
    for repetition in range(REPETITIONS):
        pool, keys = organization_with_keys(quota=ACTIVATIONS, machine_quota=QUOTA)
        answers = race(servers, keys, lambda n, r=repetition: f"host-{r}-{n}")
        no_server_errors(answers, servers)
        statuses = Counter(answer.status for answer in answers)
        codes = Counter(answer.code for answer in answers if answer.status != 201)
        machines = Machine.objects.filter(pool=pool)
        totals.update(
            requests=len(answers),
            granted=statuses[201],
            refused=statuses[409],
            over_grants=max(0, machines.count() - QUOTA),
        )
        assert statuses == {201: QUOTA, 409: ACTIVATIONS - QUOTA}, statuses
        assert codes == {"machine_quota_exceeded": ACTIVATIONS - QUOTA}, codes
        assert machines.registered().count() == machines.count() == QUOTA
        assert EngineSession.objects.filter(pool=pool).count() == QUOTA
    record(
        f"{ACTIVATIONS} new machines at once against machine quota {QUOTA}, two gunicorn instances, x{REPETITIONS}",
        **totals,
        server_errors=0,
    )


def signed_in_admins(servers, count):
    """`count` people, each signed in through the login page of one server (a real session cookie
    and CSRF token); their passwords are hashed with the servers' own hasher. Returns (person,
    browser) pairs."""
    admins = []
    for n in range(count):
        person = factories.UserFactory()
        # Few iterations: the server verifies it quickly, and upgrades it to its own count once.
        User.objects.filter(pk=person.pk).update(
            password=PBKDF2PasswordHasher().encode(PASSWORD, f"salt{n}reliability", iterations=1000)
        )
        browser = Browser(servers[n % len(servers)].port)
        browser.sign_in(person.email, PASSWORD)
        admins.append((person, browser))
    return admins


ADMINS = 4
GRANTS_PER_ADMIN = 10


def test_kse_grants_posted_by_several_admins_at_once_never_exceed_the_quota(servers):
    """Four admins, signed in over HTTP on both servers, post 40 grants of one member each at once
    against 10 KSE seats: exactly 10 seats, every other post refused on the page, no 5xx."""
    totals = Counter()
    admins = signed_in_admins(servers, ADMINS)
    browsers = [browser for _, browser in admins]
    for _ in range(REPETITIONS):
        organization = factories.OrganizationFactory()
        for person, _ in admins:
            factories.MembershipFactory(organization=organization, user=person, role="admin")
        pool = factories.LicensePoolFactory(organization=organization, product="KSE", quota=QUOTA, machine_quota=QUOTA)
        members = [
            factories.MembershipFactory(organization=organization).user for _ in range(ADMINS * GRANTS_PER_ADMIN)
        ]
        path = f"/o/{organization.public_id}/licenses/KSE/grant/"
        for browser in browsers:  # each admin's page, with the CSRF token its form carries
            assert browser.request("GET", f"/o/{organization.public_id}/licenses/KSE/").status == 200

        def grant(n):
            browser = browsers[n % ADMINS]
            # Each post goes to the other server half of the time: a load balancer does not keep
            # a person on one host.
            browser.port = servers[n % len(servers)].port
            return browser.request("POST", path, {"users": str(members[n].pk)})

        answers = all_at_once([partial(grant, n) for n in range(len(members))])
        no_server_errors(answers, servers)
        granted = [answer for answer in answers if answer.status == 302]
        refused = [answer for answer in answers if answer.status == 200]
        seats = LicensedUser.objects.filter(pool=pool).active().count()
        totals.update(
            requests=len(answers), granted=len(granted), refused=len(refused), over_grants=max(0, seats - QUOTA)
        )
        assert seats == len(granted) == QUOTA
        assert len(refused) == len(answers) - QUOTA
        assert all(b"licenses are assigned in" in answer.body for answer in refused)
    record(
        f"KSE grants: {ADMINS} admins post {ADMINS * GRANTS_PER_ADMIN} one-seat grants at once against "
        f"{QUOTA} seats, two gunicorn instances, x{REPETITIONS}",
        **totals,
        server_errors=0,
    )


RETRIES = 30


def test_one_idempotency_key_sent_30_times_at_once_takes_one_session_and_gets_one_answer(servers):
    """30 copies of one activation (one Idempotency-Key) at once, over both servers: one session,
    and every copy answered with that session's 201, the same JSON; every repetition."""
    totals = Counter()
    for repetition in range(REPETITIONS):
        pool, keys = organization_with_keys(quota=QUOTA, machine_quota=QUOTA)
        answers = all_at_once(
            [
                partial(activate, servers[n % 2].port, keys[0], "ci-runner-7", f"build-{repetition}")
                for n in range(RETRIES)
            ]
        )
        no_server_errors(answers, servers)
        sessions = EngineSession.objects.filter(pool=pool)
        # The replayed answer comes from a JSON column, so it is the same JSON, not the same bytes.
        bodies = Counter(json.dumps(answer.json(), sort_keys=True) for answer in answers)
        totals.update(
            requests=len(answers),
            granted=sum(answer.status == 201 for answer in answers),
            over_grants=max(0, sessions.count() - 1),
        )
        totals["most_distinct_answers_to_one_key"] = max(totals["most_distinct_answers_to_one_key"], len(bodies))
        assert sessions.count() == 1
        assert [answer.status for answer in answers] == [201] * RETRIES, Counter(a.code for a in answers)
        assert len(bodies) == 1
        assert answers[0].json()["session"]["id"] == sessions.get().public_id
    record(
        f"one Idempotency-Key sent {RETRIES} times at once, two gunicorn instances, x{REPETITIONS}",
        **totals,
        server_errors=0,
    )
