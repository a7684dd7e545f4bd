"""The queue end to end, as CI jobs use it: katalon-license run --wait processes against the portal
served by gunicorn (several workers, each request on its own connection) on PostgreSQL.

Fifty engines against ten licenses: every run finishes, never more than ten commands run at once
(each command notes its start and end in a shared file), and licenses go out in the order the
engines first asked; the usage page shows their waits."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from licenses.models import LicensePool
from sessions_app.models import EngineSession, QueueTicket
from tests import factories

from .conftest import CHILD, KATALON_LICENSE, ClientProcess, client_environment, read_report

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
STINT = Path(__file__).with_name("stint.py")
ENGINES = 50
QUOTA = 10
COMMAND_SECONDS = 2
RUN_LIMIT = 150  # seconds the fifty runs may take in all before the test fails


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url():
    """The test database, so the server sees what the test writes and the test what it writes."""
    db = connection.settings_dict
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class Served:
    url: str
    raw_key: str
    pool: object
    owner: object
    log: Path


@pytest.fixture
def served(transactional_db, tmp_path):
    """An organization with an RE pool of QUOTA licenses and a member's API key, served by gunicorn
    (two workers of four threads: eight database connections at most) on a free port."""
    owner = factories.UserFactory(email="owner@example.com")
    organization = factories.OrganizationFactory(owner=owner, name="Acme QA")
    engineer = factories.MembershipFactory(organization=organization).user
    pool = factories.LicensePoolFactory(organization=organization, product="RE", quota=QUOTA, machine_quota=100)
    raw_key = factories.ApiKeyFactory(user=engineer).raw_key
    port = free_port()
    log = tmp_path / "gunicorn.log"
    environment = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1"}
    with log.open("w") as output:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "katalon_admin.wsgi:application",
                "--workers=2",
                "--threads=4",
                f"--bind=127.0.0.1:{port}",
            ],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(port, server, log)
        yield Served(f"http://127.0.0.1:{port}", raw_key, pool, owner, log)
    finally:
        # Before the test database is flushed: the workers hold persistent connections to it.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)


def wait_until_up(port, server, log, timeout=60):
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"gunicorn exited at start:\n{log.read_text()[-4000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/openapi.json")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise AssertionError(f"gunicorn did not come up:\n{log.read_text()[-4000:]}")


def start(served, *arguments):
    return ClientProcess([str(KATALON_LICENSE), *map(str, arguments)], client_environment(served.url, served.raw_key))


def test_a_queued_run_starts_when_the_license_it_waits_for_is_released(served, tmp_path):
    """With the one license taken, a run with --wait gets a ticket and says where it stands; when
    the holder's run ends and releases, the waiting run is granted that license and starts."""
    LicensePool.objects.filter(pk=served.pool.pk).update(quota=1)
    done = tmp_path / "holder-done"
    holder = start(served, "run", "--", sys.executable, CHILD, "--report", tmp_path / "holder.json", "--wait-for", done)
    read_report(tmp_path / "holder.json")
    waiter = start(served, "run", "--wait", "1m", "--", sys.executable, CHILD, "--report", tmp_path / "waiter.json")
    waiter.wait_for_stderr(r"waiting for a license: position 1 of 1")
    ticket = QueueTicket.objects.get()
    assert ticket.outcome == ""
    assert not (tmp_path / "waiter.json").exists()

    done.touch()
    assert holder.finish() == 0, holder.stderr
    assert waiter.finish() == 0, waiter.stderr
    session_id = read_report(tmp_path / "waiter.json")["env"]["KATALON_LICENSE_SESSION_ID"]
    ticket.refresh_from_db()
    assert ticket.outcome == "granted"
    assert ticket.session.public_id == session_id
    assert EngineSession.objects.get(public_id=session_id).end_reason == "released"
    for process in (holder, waiter):
        assert served.raw_key not in process.stdout + process.stderr


def most_at_once(log):
    """The largest number of commands running at one time, from their start and end lines (an end
    and a start at the same instant do not overlap), and the session ids that ran."""
    events, sessions = [], []
    for line in log.read_text().splitlines():
        what, moment, session = line.split()
        events.append((float(moment), 0 if what == "end" else 1))
        if what == "start":
            sessions.append(session)
    running = most = 0
    for _, step in sorted(events):
        running += 1 if step else -1
        most = max(most, running)
    return most, sessions


def test_fifty_engines_share_ten_licenses_in_the_order_they_asked(served, tmp_path):
    """The pool's ten licenses are taken when fifty `katalon-license run --wait 5m` start, so every
    engine asks, gets a ticket and waits; then the ten are released. All fifty finish with their
    command's exit code, never more than ten commands run at once, no engine lost its place in line,
    and no ticket was granted before more than quota - 1 older ones: at each grant every older
    ticket still waiting had a license set aside for it, and took it at its next poll. The owner's
    usage page then counts all fifty waits, with their median and 95th percentile."""
    held = factories.EngineSessionFactory.create_batch(QUOTA, pool=served.pool, user=served.owner)
    log = tmp_path / "stints.log"
    began = time.monotonic()
    engines = [
        start(
            served,
            "run",
            "--wait",
            "5m",
            "--machine-id",
            f"agent-{n:02d}",
            "--",
            sys.executable,
            STINT,
            log,
            COMMAND_SECONDS,
        )
        for n in range(ENGINES)
    ]
    tickets = QueueTicket.objects.filter(pool=served.pool)
    while tickets.count() < ENGINES:
        assert time.monotonic() < began + RUN_LIMIT, f"only {tickets.count()} engines got in line"
        assert all(engine.process.poll() is None for engine in engines), "an engine ended before its turn"
        time.sleep(0.2)
    all_in_line = time.monotonic()
    EngineSession.objects.filter(pk__in=[session.pk for session in held]).end("released")

    deadline = began + RUN_LIMIT
    codes = [engine.finish(timeout=max(1, deadline - time.monotonic())) for engine in engines]
    finished = time.monotonic()

    failed = [engine.stderr for engine, code in zip(engines, codes, strict=True) if code != 0]
    assert not failed, failed[0]
    for engine in engines:
        assert served.raw_key not in engine.stdout + engine.stderr
    most, sessions = most_at_once(log)
    assert len(set(sessions)) == ENGINES
    assert 1 < most <= QUOTA

    granted = list(tickets.order_by("id").values_list("outcome", "session_id"))
    # One ticket per engine: none lost its place and joined again at the back.
    assert len(granted) == ENGINES
    assert {outcome for outcome, _ in granted} == {"granted"}
    grant_order = [session for _, session in granted]
    for position, session in enumerate(grant_order):
        assert sum(1 for older in grant_order[:position] if older > session) <= QUOTA - 1
    assert not EngineSession.objects.filter(pool=served.pool).live().exists()

    # The owner's usage page counts every one of those waits, with their median and 95th percentile.
    owner = Client()
    owner.force_login(served.owner)
    organization_id = served.pool.organization.public_id
    page = owner.get(reverse("usage", args=[organization_id]), {"product": "RE", "range": "24h"})
    assert page.status_code == 200
    waits = page.context["demand"]
    assert waits.waits == ENGINES
    assert sum(row["waits"] for row in page.context["demand_rows"]) == ENGINES
    assert timedelta(0) < waits.median_wait <= waits.p95_wait < timedelta(seconds=RUN_LIMIT)
    assert page.context["demand_p95"] in page.content.decode()
    print(
        f"\n{ENGINES} engines, quota {QUOTA}: all in line {all_in_line - began:.1f} s after starting, all done "
        f"{finished - all_in_line:.1f} s after the licenses were released, at most {most} commands at once; "
        f"usage page: {waits.waits} waits, median {page.context['demand_median']}, "
        f"95th percentile {page.context['demand_p95']}"
    )
