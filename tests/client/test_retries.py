"""The client rides out a busy or failing portal: it honours Retry-After on 429 and 503, retries with
jittered backoff, and takes one license however many attempts it needed."""

import json
import time
import urllib.request

import pytest
from django.db import connection

from sessions_app import ratelimit
from sessions_app.models import EngineSession

from .conftest import read_report
from .faults import CuttableProxy, GunicornPortal

RATE_LIMIT_WINDOW = 2


@pytest.fixture
def one_request_per_window(settings, monkeypatch):
    """The engine API's per-key limit cut to one request per 2-second window (sessions_app.ratelimit)."""
    settings.API_RATE_LIMIT = 1
    monkeypatch.setattr(ratelimit, "WINDOW_SECONDS", RATE_LIMIT_WINDOW)


def test_a_429_is_honoured_and_the_activation_goes_through(katalon, portal, one_request_per_window):
    """Refused for the rate limit, the client waits as Retry-After says and then activates, once."""
    # Start at the beginning of a window and spend its one request, so the client's first is refused.
    time.sleep(RATE_LIMIT_WINDOW - time.time() % RATE_LIMIT_WINDOW)
    request = urllib.request.Request(
        portal.url + "/api/v1/engine/organizations", headers={"Authorization": f"Bearer {portal.raw_key}"}
    )
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 200

    process = katalon.run("activate", "--verbose")

    assert process.process.returncode == 0, process.stderr
    # Retried no sooner than Retry-After said (the window's end), so the retry was not refused again.
    assert process.stderr.count("POST /api/v1/engine/activate -> 429") == 1
    assert "429 rate_limited" in process.stderr and "retrying in" in process.stderr
    assert json.loads(process.stdout)["session"]["id"] == EngineSession.objects.get().public_id


@pytest.fixture
def portal_behind_a_cuttable_database(portal, tmp_path):
    """The portal in gunicorn, its database (the test database, on PostgreSQL) reached through a
    proxy the test can cut."""
    settings = connection.settings_dict
    proxy = CuttableProxy((settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432)))
    user = settings["USER"] or "postgres"
    password = f":{settings['PASSWORD']}" if settings["PASSWORD"] else ""
    gunicorn = GunicornPortal(
        f"postgres://{user}{password}@127.0.0.1:{proxy.port}/{settings['NAME']}", tmp_path / "gunicorn.log"
    )
    yield proxy, gunicorn
    gunicorn.stop()
    proxy.close()


@pytest.mark.postgres
def test_a_503_during_activation_is_retried(katalon, portal, portal_behind_a_cuttable_database):
    """With the portal's database out of reach the portal answers 503 with Retry-After. The client
    gives up with 75 when --connect-timeout is shorter than that, and otherwise retries until the
    database is back, takes exactly one license and runs the command."""
    proxy, gunicorn = portal_behind_a_cuttable_database
    environment = katalon.environment(KATALON_ADMIN_URL=gunicorn.url)
    proxy.cut()

    gave_up = katalon.run("activate", "--connect-timeout", "2s", environment=environment)
    assert gave_up.process.returncode == 75
    assert "503 service_unavailable" in gave_up.stderr
    assert "asks for a retry in 5s, beyond the 2s --connect-timeout" in gave_up.stderr

    child, report_path = katalon.child()
    process = katalon.start("run", "--verbose", "--", *child, environment=environment)
    process.wait_for_stderr(r"503 service_unavailable: .*retrying in")
    proxy.restore()

    assert process.finish() == 0, process.stderr
    session = EngineSession.objects.get()
    assert read_report(report_path)["env"]["KATALON_LICENSE_SESSION_ID"] == session.public_id
    assert session.end_reason == "released"
