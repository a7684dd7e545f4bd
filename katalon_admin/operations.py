"""What operators' machines ask the portal: GET /healthz for load balancers, GET /metrics for Prometheus.

Both are answered by the first middleware, before the host check, the HTTPS redirect, sessions and
CSRF: a load balancer probes a backend by its address over plain HTTP (a Host that is no
ALLOWED_HOSTS name, no TLS), and neither answer depends on who asks. Neither is counted in the
request metrics, so a probe every few seconds does not drown the traffic they show.
"""

import hmac
import os
import time

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpResponse, HttpResponseNotAllowed, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from licenses.models import LicensePool, count_in_pool
from sessions_app.models import EngineSession, Machine

# Once this process has seen every migration applied it stops asking: migrations are not unapplied
# under a running server, and reading the migration graph costs more than the rest of the check.
_migrations_applied = False


def _health():
    """(healthy, what is wrong). A query proves the database answers; the migration plan, empty,
    proves the schema is the one this code expects."""
    global _migrations_applied
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        if not _migrations_applied:
            executor = MigrationExecutor(connection)
            _migrations_applied = not executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError:
        return False, "database unreachable"
    return (True, "") if _migrations_applied else (False, "migrations not applied")


def healthz(request):
    """200 {"status": "ok"} when the database answers and is migrated, else 503 saying which. No
    authentication, and nothing in it an attacker could use."""
    healthy, problem = _health()
    body = {"status": "ok"} if healthy else {"status": "unavailable", "problem": problem}
    response = JsonResponse(body, status=200 if healthy else 503)
    response["Cache-Control"] = "no-store"
    return response


class PoolCollector:
    """Live sessions and registered machines per license pool, with their quotas, read from the
    database when Prometheus scrapes (one query each), so every process and host reports the same.
    Pools are labelled by organization id, product and pool id, never by name."""

    def collect(self):
        labels = ["organization", "product", "pool"]
        families = {
            "sessions": GaugeMetricFamily(
                "katalon_pool_live_sessions", "Engine sessions holding a license now, per pool.", labels=labels
            ),
            "quota": GaugeMetricFamily(
                "katalon_pool_session_quota",
                "Concurrent licenses the pool allows (KSE: licensed users).",
                labels=labels,
            ),
            "machines": GaugeMetricFamily(
                "katalon_pool_registered_machines", "Machines registered to the pool now.", labels=labels
            ),
            "machine_quota": GaugeMetricFamily(
                "katalon_pool_machine_quota", "Machines the pool allows.", labels=labels
            ),
        }
        pools = LicensePool.objects.annotate(
            live=count_in_pool(EngineSession.objects.live()), registered=count_in_pool(Machine.objects.registered())
        ).values_list("pk", "organization__public_id", "product", "quota", "machine_quota", "live", "registered")
        for pk, organization, product, quota, machine_quota, live, registered in pools:
            values = [organization, product, str(pk)]
            families["sessions"].add_metric(values, live)
            families["quota"].add_metric(values, quota)
            families["machines"].add_metric(values, registered)
            families["machine_quota"].add_metric(values, machine_quota)
        yield from families.values()


def _authorized(request):
    """With METRICS_TOKEN set, only `Authorization: Bearer <token>`; without it (metrics() answers
    only while DEBUG then), anyone on the developer's machine."""
    token = settings.METRICS_TOKEN
    if not token:
        return True
    presented = request.headers.get("Authorization", "")
    return hmac.compare_digest(presented.encode(), f"Bearer {token}".encode())


def process_metrics():
    """The exposition of what the processes counted (requests, activations)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # gunicorn's workers each count in their own files there; this sums them, whichever worker asks.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def metrics(request):
    # A production portal with no token configured shows its metrics to nobody.
    if not settings.METRICS_TOKEN and not settings.DEBUG:
        return HttpResponse("Not found.\n", status=404, content_type="text/plain")
    if not _authorized(request):
        response = HttpResponse("Send the metrics token: Authorization: Bearer <METRICS_TOKEN>.\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        response["Content-Type"] = "text/plain"
        return response
    pools = CollectorRegistry()
    pools.register(PoolCollector())
    try:
        body = process_metrics() + generate_latest(pools)
    except DatabaseError:
        return HttpResponse("The database does not answer.\n", status=503, content_type="text/plain")
    response = HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


ENDPOINTS = {"/healthz": healthz, "/metrics": metrics}


class OperationsEndpointsMiddleware:
    """First in MIDDLEWARE: answers ENDPOINTS itself, so that neither the host check nor the HTTPS
    redirect nor the request metrics see them; hands everything else on untouched."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        endpoint = ENDPOINTS.get(request.path_info)
        if endpoint is None:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        return endpoint(request)


# The methods HTTP defines; anything else a client invents is counted as "other", so that made-up
# methods cannot grow the metrics by one series each.
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})

RESPONSES = Counter(
    "katalon_http_responses", "Responses by view (URL name), method and status.", ["view", "method", "status"]
)
LATENCY = Histogram(
    "katalon_http_request_duration_seconds",
    "Time from the request's arrival in Django to its answer, by view (URL name) and method.",
    ["view", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class RequestMetricsMiddleware:
    """Request counts and latencies by view, with prometheus_client itself. (django-prometheus, the
    usual wrapper, declares Django < 6.1 and so cannot be installed beside this project's Django.)
    Second in MIDDLEWARE, right after the operations endpoints: the clock covers every other
    middleware, and the status counted is the one sent, axes' 429 included."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = (match.view_name or "<unnamed>") if match else "<unresolved>"
        method = request.method if request.method in STANDARD_METHODS else "other"
        LATENCY.labels(view, method).observe(time.perf_counter() - started)
        RESPONSES.labels(view, method, str(response.status_code)).inc()
        return response
