"""GET /healthz for load balancers and GET /metrics for Prometheus, as an operator's machines use them."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.db.migrations.recorder import MigrationRecorder
from prometheus_client import REGISTRY

from katalon_admin import operations
from tests import factories
from tests.sessions_app.conftest import Engine

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "metrics-token-for-tests-0123456789"
PROBE = {"HTTP_HOST": "10.0.3.7:8000"}  # a load balancer asks by address: no ALLOWED_HOSTS name


def run_python(code, **environment):
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "katalon_admin.settings", **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.django_db
def test_healthz_answers_a_load_balancer_by_address_over_plain_http(client, settings):
    """200 with no authentication, even with the HTTPS redirect on and a Host that is no site name;
    the body says nothing but that it is well."""
    settings.SECURE_SSL_REDIRECT = True
    response = client.get("/healthz", **PROBE)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"
    assert client.head("/healthz", **PROBE).status_code == 200
    assert client.post("/healthz", **PROBE).status_code == 405


@pytest.mark.django_db
def test_healthz_is_503_while_a_migration_is_not_applied(client):
    """A server started on a database not yet migrated is not ready: 503 until the migration is there."""
    recorder = MigrationRecorder(__import__("django.db", fromlist=["connection"]).connection)
    latest = recorder.migration_qs.filter(app="organizations").order_by("-id").first()
    operations._migrations_applied = False
    latest.delete()
    try:
        response = client.get("/healthz", **PROBE)
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "problem": "migrations not applied"}
    finally:
        recorder.record_applied(latest.app, latest.name)
    assert client.get("/healthz", **PROBE).status_code == 200


def test_healthz_is_503_when_the_database_does_not_answer():
    """A portal whose PostgreSQL is not there answers 503 (no 500, no stack trace), in its own process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = run_python(
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "response = Client().get('/healthz', HTTP_HOST='10.0.3.7')\n"
        "print(response.status_code, response.content.decode())",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{port}/nowhere",
    )
    assert output.split(" ", 1)[0] == "503"
    assert '"problem": "database unreachable"' in output


@pytest.mark.django_db
def test_metrics_are_off_in_production_without_a_token(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", **PROBE).status_code == 404


@pytest.mark.django_db
def test_metrics_want_the_token_when_one_is_set(client, settings):
    settings.METRICS_TOKEN = TOKEN
    missing = client.get("/metrics", **PROBE)
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"] == 'Bearer realm="metrics"'
    for wrong in ("Bearer not-the-token", TOKEN, f"Bearer {TOKEN}x", "Bearer ünïcode"):
        assert client.get("/metrics", HTTP_AUTHORIZATION=wrong, **PROBE).status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **PROBE).status_code == 200


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(client):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **PROBE)
    assert response.status_code == 200
    return response.content.decode()


def metric_value(text, name, **labels):
    """The value of one sample in the exposition text."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))  # exposition sorts labels
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{{{wanted}}} not in the metrics:\n" + "\n".join(
        line for line in text.splitlines() if line.startswith(name)
    )
    return float(match.group(1))


@pytest.mark.django_db
def test_activations_are_counted_by_outcome(client, settings, organization, member_user):
    """Every activation decision counts once: granted, or refused by its error code."""
    settings.METRICS_TOKEN = TOKEN
    factories.LicensePoolFactory(organization=organization, product="RE", quota=1, machine_quota=5)
    engine = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    granted = sample("katalon_activations_total", outcome="granted")
    refused = sample("katalon_activations_total", outcome="session_quota_exceeded")
    assert engine.activate(machine_id="agent-1").status_code == 201
    for index in range(2):
        assert engine.activate(machine_id=f"agent-{index + 2}").json()["error"]["code"] == "session_quota_exceeded"
    text = scrape(client)
    assert metric_value(text, "katalon_activations_total", outcome="granted") == granted + 1
    assert metric_value(text, "katalon_activations_total", outcome="session_quota_exceeded") == refused + 2


@pytest.mark.django_db
def test_requests_are_counted_and_timed_by_view(client, settings, owner_client, organization):
    settings.METRICS_TOKEN = TOKEN
    labels = {"view": "members", "method": "GET"}
    before = sample("katalon_http_request_duration_seconds_count", **labels)
    for _ in range(2):
        assert owner_client.get(f"/o/{organization.public_id}/members/").status_code == 200
    text = scrape(client)
    assert metric_value(text, "katalon_http_request_duration_seconds_count", **labels) == before + 2
    assert metric_value(text, "katalon_http_responses_total", status="200", **labels) >= 2


@pytest.mark.django_db
def test_an_invented_method_does_not_grow_the_metrics(client, settings):
    """A client sending made-up methods is counted under one label, not one new series per method."""
    settings.METRICS_TOKEN = TOKEN
    client.generic("BREW42", "/accounts/login/")
    text = scrape(client)
    assert "BREW42" not in text
    assert 'method="other"' in text


@pytest.mark.django_db
def test_live_sessions_and_machines_per_pool_in_one_query(
    client, settings, organization, member_user, django_assert_num_queries
):
    """Read from the database at scrape time: every pool, an idle one at zero, with its live sessions
    and registered machines counted in the same query, however many pools there are."""
    settings.METRICS_TOKEN = TOKEN
    busy = factories.LicensePoolFactory(organization=organization, product="RE", quota=4, machine_quota=6)
    idle = factories.LicensePoolFactory(product="RE", quota=2)
    engine = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    for index in range(3):
        assert engine.activate(machine_id=f"agent-{index}").status_code == 201
    session = engine.activate(machine_id="agent-3").json()["session"]["id"]
    assert engine.post(f"engine/sessions/{session}/release").status_code in (200, 204)
    with django_assert_num_queries(1):
        text = scrape(client)
    busy_labels = {"organization": organization.public_id, "product": "RE", "pool": busy.pk}
    idle_labels = {"organization": idle.organization.public_id, "product": "RE", "pool": idle.pk}
    assert metric_value(text, "katalon_pool_live_sessions", **busy_labels) == 3
    assert metric_value(text, "katalon_pool_registered_machines", **busy_labels) == 4
    assert metric_value(text, "katalon_pool_session_quota", **busy_labels) == 4
    assert metric_value(text, "katalon_pool_machine_quota", **busy_labels) == 6
    assert metric_value(text, "katalon_pool_live_sessions", **idle_labels) == 0
    assert metric_value(text, "katalon_pool_registered_machines", **idle_labels) == 0


def test_with_a_multiprocess_directory_every_process_counts_into_one_sum(tmp_path):
    """Under gunicorn (PROMETHEUS_MULTIPROC_DIR), what two worker processes counted is summed by
    whichever process serves /metrics."""
    environment = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    worker = (
        "import django; django.setup()\n"
        "from sessions_app.metrics import count_activation\n"
        "count_activation('granted'); count_activation('machine_quota_exceeded')\n"
    )
    run_python(worker, **environment)
    run_python(worker, **environment)
    output = run_python(
        "import django; django.setup()\n"
        "from katalon_admin.operations import process_metrics\n"
        "print(process_metrics().decode())",
        **environment,
    )
    assert metric_value(output, "katalon_activations_total", outcome="granted") == 2
    assert metric_value(output, "katalon_activations_total", outcome="machine_quota_exceeded") == 2
