"""How the session CSV export scales: time and memory to stream 1,000 rows and 1,000,000 rows.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/katalon_bench .venv/bin/python benchmarks/csv_export.py [--rows N]

Runs in a throwaway test database (test_<name>) on PostgreSQL, where the export reads through a
server-side cursor. Sessions are inserted with one INSERT ... SELECT generate_series, then the export
view runs in-process and its stream is consumed chunk by chunk, as a WSGI server would send it.
Prints, per size: seconds, rows per second, bytes, the process's peak RSS (ru_maxrss, which only
grows, so the second figure includes the first) and the peak of Python allocations during the
export (tracemalloc, in a second pass since tracing slows Python down). Then times the usage page
itself (the peak query over 30 days and the first page of history) at both sizes."""

import argparse
import resource
import statistics
import sys
import time
import tracemalloc
from datetime import timedelta

import django_env

django_env.setup()

from django.db import connection  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from django.test.utils import override_settings, setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402
from django_htmx.middleware import HtmxDetails  # noqa: E402

from licenses.models import LicensePool  # noqa: E402
from licenses.usage_views import usage, usage_export  # noqa: E402
from organizations.models import Membership, Organization, User  # noqa: E402
from sessions_app.models import EngineSession, Machine  # noqa: E402

INSERT_SESSIONS = """
INSERT INTO {table} (public_id, pool_id, machine_id, user_id, hostname, engine_version, started_at,
                     last_heartbeat_at, lease_expires_at, ended_at, end_reason)
SELECT 's_bench_' || %s || '_' || n, %s, %s, %s, 'agent.ci.example.com', '10.2.0',
       %s - (n %% 2500000) * interval '1 second',
       %s - (n %% 2500000) * interval '1 second' + interval '20 minutes',
       %s - (n %% 2500000) * interval '1 second' + interval '25 minutes',
       %s - (n %% 2500000) * interval '1 second' + interval '20 minutes',
       'released'
FROM generate_series(1, %s) AS n
"""


def build(rows):
    """An organization whose RE pool has `rows` ended sessions in the last 30 days."""
    name = f"bench{rows}"
    organization = Organization.objects.create(name=name)
    owner = User.objects.create_user(email=f"owner@{name}.example", password=None, name="Bench Owner")
    Membership.objects.create(organization=organization, user=owner, role="owner")
    now = timezone.now()
    pool = LicensePool.objects.create(
        organization=organization,
        product="RE",
        quota=100,
        machine_quota=100,
        starts_at=now - timedelta(days=60),
        expires_at=now + timedelta(days=300),
    )
    machine = Machine.objects.create(pool=pool, machine_id=f"agent-{name}", hostname="agent.ci.example.com")
    ended_by = now - timedelta(hours=1)
    with connection.cursor() as cursor:
        cursor.execute(
            INSERT_SESSIONS.format(table=connection.ops.quote_name(EngineSession._meta.db_table)),
            [name, pool.pk, machine.pk, owner.pk, ended_by, ended_by, ended_by, ended_by, rows],
        )
        cursor.execute("ANALYZE " + connection.ops.quote_name(EngineSession._meta.db_table))
    return organization, owner


def export(organization, owner):
    """Run the export view and consume its stream. Returns (seconds, bytes, lines)."""
    request = RequestFactory().get(f"/o/{organization.public_id}/usage/sessions.csv", {"range": "30d"})
    request.user = owner
    started = time.perf_counter()
    response = usage_export(request, org_id=organization.public_id)
    size = lines = 0
    for chunk in response.streaming_content:
        size += len(chunk)
        lines += 1
    return time.perf_counter() - started, size, lines


def render_usage_page(organization, owner):
    """Seconds to render the usage page (peak per day over 30 days, figures, first history page)."""
    request = RequestFactory().get(f"/o/{organization.public_id}/usage/", {"range": "30d"})
    request.user = owner
    request.htmx = HtmxDetails(request)
    started = time.perf_counter()
    response = usage(request, org_id=organization.public_id)
    assert response.status_code == 200, response.status_code
    return time.perf_counter() - started


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="sessions in the large export")
    parser.add_argument("--small", type=int, default=1_000, help="sessions in the small export")
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Run this on PostgreSQL (set DATABASE_URL): the server-side cursor is what is measured.")

    setup_test_environment()
    # The page links static files by name; without collectstatic there is no manifest to hash them.
    override_settings(
        STORAGES={
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }
    ).enable()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        sizes = [options.small, options.rows]
        built = {}
        for rows in sizes:
            started = time.perf_counter()
            built[rows] = build(rows)
            print(f"inserted {rows:>9,} sessions in {time.perf_counter() - started:6.1f} s", flush=True)

        print(f"baseline peak RSS before any export: {peak_rss_mb():.1f} MB", flush=True)
        results = {}
        for rows in sizes:
            seconds, size, lines = export(*built[rows])
            assert lines == rows + 1, (lines, rows)
            results[rows] = (seconds, size, peak_rss_mb())
            print(
                f"export {rows:>9,} rows: {seconds:7.2f} s, {rows / seconds:9,.0f} rows/s, "
                f"{size / 1e6:7.1f} MB of CSV, process peak RSS {results[rows][2]:.1f} MB",
                flush=True,
            )
        for rows in sizes:
            tracemalloc.start()
            export(*built[rows])
            _current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"export {rows:>9,} rows: peak Python allocations during the export {peak / 1e6:.1f} MB", flush=True)
        for rows in sizes:
            timings = [render_usage_page(*built[rows]) for _ in range(3)]
            print(f"usage page over {rows:>9,} sessions: median {statistics.median(timings):.2f} s", flush=True)
        small, large = results[options.small], results[options.rows]
        print(
            f"large/small: time x{large[0] / small[0]:.0f} for x{options.rows / options.small:.0f} rows; "
            f"peak RSS grew {large[2] - small[2]:.1f} MB"
        )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
