"""Engine API benchmark: activation, heartbeat and release, as an engine calls them.

Usage (from the project root):

    # In-process, through Django's test client, on a throw-away test database made from DATABASE_URL
    # (SQLite in memory by default; PostgreSQL when DATABASE_URL points at it):
    .venv/bin/python benchmarks/engine_api.py --requests 300
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/katalon_bench .venv/bin/python benchmarks/engine_api.py

    # Against a running server (loopback only), e.g. gunicorn on PostgreSQL:
    #   DEBUG=false SECRET_KEY=... DATABASE_URL=postgres://... SECURE_SSL_REDIRECT=false \
    #       .venv/bin/gunicorn katalon_admin.wsgi -w 4 -b 127.0.0.1:8100
    #   KEY=$(.venv/bin/python manage.py create_api_key someone@example.com | tail -1)
    .venv/bin/python benchmarks/engine_api.py --url http://127.0.0.1:8100 --key "$KEY" --requests 300 --workers 8

Each cycle is one activation, one heartbeat and one release on its own machine id (ephemeral, so the
machine quota is not used up). The figures are latency median and p95 per call, and calls per second
over the whole run. The request count is bounded (--requests cycles, at most 5000).
"""

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_CYCLES = 5000


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(title, timings, wall_seconds):
    print(f"\n{title}")
    print(f"{'call':<12}{'count':>8}{'median ms':>12}{'p95 ms':>10}")
    total = 0
    for name, values in timings.items():
        total += len(values)
        median_ms = statistics.median(values) * 1000
        p95_ms = percentile(values, 0.95) * 1000
        print(f"{name:<12}{len(values):>8}{median_ms:>12.2f}{p95_ms:>10.2f}")
    print(f"throughput: {total / wall_seconds:.0f} calls/s over {wall_seconds:.2f} s ({total} calls)")


class HttpEngine:
    """An engine talking HTTP to a running portal."""

    def __init__(self, base_url, raw_key):
        self.base_url = base_url.rstrip("/")
        self.raw_key = raw_key

    def post(self, path, body=None):
        request = urllib.request.Request(
            f"{self.base_url}/api/v1/{path}",
            data=json.dumps(body or {}).encode(),
            headers={"Authorization": f"Bearer {self.raw_key}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


class ClientEngine:
    """An engine calling the API in-process through Django's test client."""

    def __init__(self, raw_key):
        from django.test import Client

        self.client = Client()
        self.raw_key = raw_key

    def post(self, path, body=None):
        response = self.client.post(
            f"/api/v1/{path}",
            data=body or {},
            content_type="application/json",
            headers={"Authorization": f"Bearer {self.raw_key}"},
        )
        return response.status_code, response.json()


def run_cycles(engine, cycles, org_id, timings, lock):
    for _ in range(cycles):
        machine_id = "bench-" + uuid.uuid4().hex[:12]
        body = {"product": "RE", "machine_id": machine_id, "ephemeral": True}
        if org_id:
            body["org_id"] = org_id
        started = time.perf_counter()
        status, answer = engine.post("engine/activate", body)
        activated = time.perf_counter()
        if status != 201:
            raise SystemExit(f"activation answered {status}: {answer}")
        session_id = answer["session"]["id"]
        status, answer = engine.post(f"engine/sessions/{session_id}/heartbeat")
        beaten = time.perf_counter()
        if status != 200:
            raise SystemExit(f"heartbeat answered {status}: {answer}")
        status, answer = engine.post(f"engine/sessions/{session_id}/release")
        released = time.perf_counter()
        if status != 200:
            raise SystemExit(f"release answered {status}: {answer}")
        with lock:
            timings["activate"].append(activated - started)
            timings["heartbeat"].append(beaten - activated)
            timings["release"].append(released - beaten)


def measure(make_engine, cycles, workers, org_id):
    timings = {"activate": [], "heartbeat": [], "release": []}
    lock = threading.Lock()
    share, extra = divmod(cycles, workers)

    def worker(n):
        try:
            run_cycles(make_engine(), share + (1 if n < extra else 0), org_id, timings, lock)
        finally:
            # In-process threads each opened their own database connection.
            if "django.db" in sys.modules:
                sys.modules["django.db"].connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return timings, time.perf_counter() - started


def in_process(cycles, workers):
    import django_env

    django_env.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import get_runner, setup_test_environment, teardown_test_environment

    setup_test_environment()
    runner = get_runner(settings)(verbosity=0, interactive=False)
    old_config = runner.setup_databases()
    try:
        from datetime import timedelta

        from django.utils import timezone

        from licenses.models import LicensePool
        from organizations.models import Membership, Organization, User
        from sessions_app import actions

        user = User.objects.create_user("bench@example.com", "unused-password")
        organization = Organization.objects.create(name="Benchmark Org")
        Membership.objects.create(organization=organization, user=user, role="owner")
        LicensePool.objects.create(
            organization=organization,
            product="RE",
            quota=10_000,
            machine_quota=10_000,
            starts_at=timezone.now() - timedelta(days=1),
            expires_at=timezone.now() + timedelta(days=365),
        )
        _, raw_key = actions.create_api_key(user=user, name="benchmark", actor=user, ip_address=None)
        # SQLite serialises writers; threads only measure contention there.
        if connection.vendor == "sqlite":
            workers = 1

        timings, wall = measure(lambda: ClientEngine(raw_key), cycles, workers, organization.public_id)
        report(f"In-process (Django test client), {connection.vendor}, {workers} worker(s)", timings, wall)
    finally:
        runner.teardown_databases(old_config)
        teardown_test_environment()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="A running portal on loopback, e.g. http://127.0.0.1:8100")
    parser.add_argument("--key", help="An API key of a member of an organization with an RE pool (with --url)")
    parser.add_argument("--org", help="The organization id, when the key's user has several")
    parser.add_argument("--requests", type=int, default=300, help="Cycles of activate+heartbeat+release")
    parser.add_argument("--workers", type=int, default=4, help="Concurrent engines")
    arguments = parser.parse_args()
    cycles = max(1, min(arguments.requests, MAX_CYCLES))
    workers = max(1, min(arguments.workers, cycles, 64))
    if arguments.url:
        host = urllib.parse.urlparse(arguments.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            parser.error("--url must be a loopback address: this benchmark is not for servers you do not run")
        if not arguments.key:
            parser.error("--url needs --key")

        def over_http():
            return HttpEngine(arguments.url, arguments.key)

        timings, wall = measure(over_http, cycles, workers, arguments.org)
        report(f"HTTP against {arguments.url}, {workers} worker(s)", timings, wall)
    else:
        in_process(cycles, workers)


if __name__ == "__main__":
    main()
