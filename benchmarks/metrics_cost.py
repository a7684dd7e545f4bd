"""What the Prometheus metrics cost the engine API: an engine API request (a heartbeat, the commonest
call) served with the request-metrics middleware (prometheus_client) and without it, in alternating
batches in one process, and the activation counter's increment alone.

    .venv/bin/python benchmarks/metrics_cost.py [--requests 300] [--rounds 7]

In-process through Django's test client, on a throwaway test database made from DATABASE_URL (an
in-memory SQLite one by default). Prints medians with their range, and the ratio with/without.
"""

import argparse
import statistics
import time

import django_env

django_env.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import override_settings, setup_test_environment  # noqa: E402

METRICS_MIDDLEWARE = {"katalon_admin.operations.RequestMetricsMiddleware"}


def per_request_us(client, path, headers, requests):
    started = time.perf_counter()
    for _ in range(requests):
        response = client.post(path, data={}, content_type="application/json", headers=headers)
        assert response.status_code == 200, response.content
    return (time.perf_counter() - started) / requests * 1e6


def middleware_alone_us(calls=20_000):
    """The metrics middleware's own time per request, wrapped around a view that does nothing,
    resolved as the API's heartbeat is, on one reused request."""
    from django.http import HttpResponse
    from django.test import RequestFactory
    from django.urls import resolve

    from katalon_admin.operations import RequestMetricsMiddleware

    request = RequestFactory().post("/api/v1/engine/sessions/s_x/heartbeat", content_type="application/json")
    match = resolve(request.path_info)

    def view(request):
        request.resolver_match = match
        return HttpResponse(b"{}")

    chain = RequestMetricsMiddleware(view)
    results = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            chain(request)
        results.append((time.perf_counter() - started) / calls * 1e6)
    return results


def fmt(values):
    return f"{statistics.median(values):8.1f} µs ({min(values):.1f}-{max(values):.1f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per batch (at most 5,000)")
    parser.add_argument("--rounds", type=int, default=7, help="batches of each kind, alternating (at most 50)")
    arguments = parser.parse_args()
    requests = max(10, min(arguments.requests, 5000))
    rounds = max(1, min(arguments.rounds, 50))

    setup_test_environment()
    if connection.vendor != "sqlite":
        # A database of its own, never the test suite's, replaced if a run was interrupted.
        connection.settings_dict["TEST"]["NAME"] = f"{connection.settings_dict['NAME']}_metrics_bench"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        from tests import factories

        with override_settings(API_RATE_LIMIT=0, API_AUTH_FAILURE_LIMIT=0):
            member = factories.MembershipFactory().user
            factories.LicensePoolFactory(organization=member.memberships.get().organization, quota=5)
            key = factories.ApiKeyFactory(user=member).raw_key
            headers = {"Authorization": f"Bearer {key}"}
            activation = Client().post(
                "/api/v1/engine/activate",
                data={"product": "RE", "machine_id": "bench-1"},
                content_type="application/json",
                headers=headers,
            )
            path = f"/api/v1/engine/sessions/{activation.json()['session']['id']}/heartbeat"
            without_metrics = [name for name in settings.MIDDLEWARE if name not in METRICS_MIDDLEWARE]
            timings = {"with metrics": [], "without": []}
            for _ in range(rounds):
                for label, middleware in (("with metrics", settings.MIDDLEWARE), ("without", without_metrics)):
                    with override_settings(MIDDLEWARE=middleware):
                        client = Client()
                        per_request_us(client, path, headers, 10)  # warm: middleware chain, connection
                        timings[label].append(per_request_us(client, path, headers, requests))

        from sessions_app.metrics import count_activation

        bare = middleware_alone_us()

        increments = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(100_000):
                count_activation("granted")
            increments.append((time.perf_counter() - started) / 100_000 * 1e6)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)

    print(f"{connection.vendor}, heartbeat through the test client, {requests} requests a batch, {rounds} rounds")
    for label, values in timings.items():
        print(f"  {label:13} {fmt(values)} per request")
    ratios = [with_ / without for with_, without in zip(timings["with metrics"], timings["without"], strict=True)]
    print(
        f"  ratio with/without metrics middleware: median {statistics.median(ratios):.3f} "
        f"({min(ratios):.3f}-{max(ratios):.3f}), per round"
    )
    print(f"  the metrics middleware alone, around a view doing nothing: {fmt(bare)} per request")
    print(f"  activation counter increment alone: {fmt(increments)}")


if __name__ == "__main__":
    main()
