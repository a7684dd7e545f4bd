"""How the Licenses page scales: render time and queries for a small organization against one with
2,000 members, 2,000 machines and 500 live sessions.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/katalon_bench .venv/bin/python benchmarks/licenses_page.py

Runs in a throwaway test database (test_<name>), prints medians and the big/small ratio."""

import statistics
import time
from datetime import timedelta

import django_env

django_env.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, override_settings  # noqa: E402
from django.utils import timezone  # noqa: E402

from licenses.models import LicensedUser, LicensePool  # noqa: E402
from organizations.models import Membership, Organization, User  # noqa: E402
from sessions_app.models import EngineSession, Machine  # noqa: E402

ROUNDS = 15


def build(name, *, members, machines, live_sessions, licensed):
    organization = Organization.objects.create(name=name)
    owner = User.objects.create_user(email=f"owner@{name}.example", password=None)
    Membership.objects.create(organization=organization, user=owner, role="owner")
    users = User.objects.bulk_create(
        [User(email=f"m{n}@{name}.example", name=f"Member {n:05d}", password="!") for n in range(members)]
    )
    Membership.objects.bulk_create([Membership(organization=organization, user=user) for user in users])
    now = timezone.now()
    pool = LicensePool.objects.create(
        organization=organization, product="KSE", quota=5000, machine_quota=5000, expires_at=now + timedelta(days=300)
    )
    LicensedUser.objects.bulk_create([LicensedUser(pool=pool, user=user) for user in users[:licensed]])
    machine_rows = Machine.objects.bulk_create(
        [
            Machine(pool=pool, machine_id=f"m-{n:05d}", hostname=f"h{n}", user=users[n % members])
            for n in range(machines)
        ]
    )
    EngineSession.objects.bulk_create(
        [
            EngineSession(
                pool=pool, machine=machine_rows[n], user=users[n], lease_expires_at=now + timedelta(minutes=30)
            )
            for n in range(live_sessions)
        ]
    )
    client = Client()
    client.force_login(owner)
    return client, f"/o/{organization.public_id}/licenses/KSE/"


def measure(client, path):
    client.get(path)  # warm the template cache
    timings = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    with CaptureQueriesContext(connection) as queries:
        client.get(path)
    return statistics.median(timings), len(queries.captured_queries)


# Measure the page, not static file hashing: serve the source files as the tests do.
PLAIN_STATIC = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}


@override_settings(STORAGES=PLAIN_STATIC)
def main():
    old_name = connection.creation.create_test_db(verbosity=0)
    try:
        small = build("small", members=10, machines=10, live_sessions=10, licensed=10)
        big = build("big", members=2000, machines=2000, live_sessions=500, licensed=500)
        if connection.vendor == "postgresql":
            # Autovacuum would have analysed tables this size long ago; without statistics the
            # planner takes the fresh tables for empty and picks nested loops.
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        small_ms, small_queries = measure(*small)
        big_ms, big_queries = measure(*big)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print(f"database: {connection.vendor}, {ROUNDS} rounds each")
    print(f"small (10 members, 10 machines, 10 sessions):        median {small_ms:7.1f} ms, {small_queries} queries")
    print(f"big (2,000 members, 2,000 machines, 500 sessions):   median {big_ms:7.1f} ms, {big_queries} queries")
    print(f"big/small time ratio: {big_ms / small_ms:.2f}; queries equal: {big_queries == small_queries}")


if __name__ == "__main__":
    main()
