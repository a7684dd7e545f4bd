"""Faults, for real: the portal in gunicorn on a PostgreSQL cluster of the test's own (initdb and
pg_ctl on a free port; the shared server is never touched), whose connections the test terminates,
which the test stops and starts, and whose gunicorn workers the test kills mid-request.
Every figure goes to the run's "reliability figures" (docs/RELIABILITY.md)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from tests.conftest import IN_CI
from tests.reliability import record
from tests.servers import ROOT, Gunicorn, ThrowawayPostgres, activate, all_at_once, call

pytestmark = [pytest.mark.postgres]

DATABASE = "katalon"
# The outage of the stop-and-start proof, and how long engines keep calling after it (a longer
# documented run sets more).
OUTAGE_SECONDS = float(os.environ.get("RELIABILITY_OUTAGE_SECONDS", "3"))
RECOVERY_LIMIT_SECONDS = 5


@pytest.fixture(scope="module")
def cluster():
    if ThrowawayPostgres.find_bin() is None:
        if IN_CI:
            pytest.fail("CI: PostgreSQL's server programs (initdb, pg_ctl) are not installed")
        pytest.skip("needs PostgreSQL's server programs (initdb, pg_ctl): apt-get install postgresql, or set PG_BIN")
    server = ThrowawayPostgres()
    try:
        server.query(f'CREATE DATABASE "{DATABASE}"')
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": server.url(DATABASE)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def portal(cluster, tmp_path_factory):
    """One gunicorn instance (2 workers of 4 threads) on the throwaway cluster."""
    server = Gunicorn(cluster.url(DATABASE), tmp_path_factory.mktemp("faults") / "gunicorn.log")
    try:
        yield server
    finally:
        server.stop()


def seed(cluster, **spec):
    result = subprocess.run(
        [sys.executable, "-m", "tests.cluster_seed", json.dumps(spec)],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": cluster.url(DATABASE), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def sessions(cluster, pool_id):
    """(public id, ended, end reason) of every session of the pool."""
    return cluster.query(
        "SELECT public_id, ended_at IS NOT NULL, end_reason FROM sessions_app_enginesession WHERE pool_id = %s",
        (pool_id,),
        DATABASE,
    )


def waiting_on_locks(cluster, table):
    """Server backends waiting for a lock while running a statement on `table`."""
    return cluster.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' AND query LIKE %s",
        (DATABASE, f'%"{table}"%'),
    )


def most_at_once(intervals):
    """The most of these (start, end) intervals that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    live = most = 0
    for _, change in events:  # at one instant an end sorts before a start
        live += change
        most = max(most, live)
    return most


def wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_unavailable(answer):
    """The contract's 503: Retry-After, and the error body with its code."""
    assert answer.status == 503, answer
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.json() == {
        "error": {"code": "service_unavailable", "message": answer.json()["error"]["message"], "details": {}}
    }
    assert answer.headers.get("x-request-id")


def test_terminated_connections_around_a_pool_lock_grant_nothing_partial_and_the_waiters_proceed(cluster, portal):
    """A connection holds the pool's row lock with a change in flight while 20 activations queue
    behind it; one waiting server backend and then the holder are terminated (pg_terminate_backend).
    The holder's change is gone, the terminated request is a 503 whose retry is decided afresh, and
    every other activation proceeds: exactly the quota granted, the rest session_quota_exceeded."""
    quota, engines = 10, 20
    organization = seed(cluster, quota=quota, machine_quota=100, members=engines)
    pool = organization["pool"]
    holder = cluster.connect(DATABASE, autocommit=False)
    with holder.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        holder_pid = cursor.fetchone()[0]
        cursor.execute("SELECT quota FROM licenses_licensepool WHERE id = %s FOR UPDATE", (pool,))
        # Half a change of the pool's terms, never committed: it must not let anyone in.
        cursor.execute("UPDATE licenses_licensepool SET quota = quota + 5 WHERE id = %s", (pool,))

    def engine(n):
        return activate(portal.port, organization["keys"][n], f"agent-{n}", f"start-{n}")

    with ThreadPoolExecutor(engines) as threads:
        futures = [threads.submit(engine, n) for n in range(engines)]
        # Request threads of both workers wait for the pool's row (each worker has 4).
        wait_for(lambda: len(waiting_on_locks(cluster, "licenses_licensepool")) >= 4, "activations to wait")
        time.sleep(0.5)
        victim = waiting_on_locks(cluster, "licenses_licensepool")[0][0]
        cluster.query("SELECT pg_terminate_backend(%s)", (victim,))
        cluster.query("SELECT pg_terminate_backend(%s)", (holder_pid,))
        answers = [future.result() for future in futures]
    holder.close()

    statuses = Counter(answer.status for answer in answers)
    assert statuses == {201: quota, 409: engines - quota - 1, 503: 1}, (statuses, portal.log_tail())
    assert {answer.code for answer in answers if answer.status == 409} == {"session_quota_exceeded"}
    terminated = next(n for n, answer in enumerate(answers) if answer.status == 503)
    assert_unavailable(answers[terminated])
    assert cluster.query("SELECT quota FROM licenses_licensepool WHERE id = %s", (pool,), DATABASE) == [(quota,)]
    rows = sessions(cluster, pool)
    assert len(rows) == quota and not any(ended for _, ended, _ in rows)
    # Its claim went with its transaction: the retry is decided (the quota is full), not "in use".
    retry = engine(terminated)
    assert (retry.status, retry.code) == (409, "session_quota_exceeded")
    assert retry.json() == engine(terminated).json()
    record(
        "pool lock holder and one waiting server backend terminated (pg_terminate_backend), 20 activations "
        f"against quota {quota}",
        requests=len(answers) + 2,
        granted=statuses[201],
        refused=statuses[409] + 2,
        unavailable_503=statuses[503],
        server_errors=0,
        over_grants=max(0, len(rows) - quota),
        faults_survived=2,
    )


def test_a_database_stopped_under_load_answers_503_then_recovers_within_5_seconds_counting_exactly(cluster, portal):
    """Six engines activate, heartbeat and release in a loop (against 4 licenses) while the database is
    stopped for a few seconds and started again. Meanwhile every answer is the contract's 503 with
    Retry-After; within 5 s of the restart every engine is answered again; no 500 ever; and every
    session granted is in the database, released, with never more than the quota live at once."""
    quota, engines = 4, 6
    organization = seed(cluster, quota=quota, machine_quota=100, members=engines)
    pool = organization["pool"]
    stopping = threading.Event()
    log = []  # (engine, started, finished, answer)
    log_lock = threading.Lock()

    def send(n, path, body=None, idempotency_key=None):
        """One call, repeated while it is a 503 (at once rather than after Retry-After: the proof
        measures how soon the portal answers again)."""
        headers = {"Authorization": f"Bearer {organization['keys'][n]}"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        while True:
            started = time.monotonic()
            answer = call(portal.port, "POST", path, body or {}, headers, timeout=30)
            with log_lock:
                log.append((n, started, time.monotonic(), answer))
            if answer.status != 503:
                return answer
            time.sleep(0.1)

    granted, released = [], []
    # When each session was surely live: from its grant's answer to its release's request. The
    # database's own times are when each transaction began, which may predate the lock it waited for.
    held = []

    def engine(n):
        cycle = 0
        while not stopping.is_set():
            cycle += 1
            answer = send(
                n, "/api/v1/engine/activate", {"product": "RE", "machine_id": f"agent-{n}"}, f"engine-{n}-run-{cycle}"
            )
            if answer.status != 201:
                time.sleep(0.1)
                continue
            granted_at = time.monotonic()
            session = answer.json()["session"]["id"]
            granted.append(session)
            send(n, f"/api/v1/engine/sessions/{session}/heartbeat")
            held.append((granted_at, time.monotonic()))
            if send(n, f"/api/v1/engine/sessions/{session}/release").status == 200:
                released.append(session)

    with ThreadPoolExecutor(engines) as threads:
        running = [threads.submit(engine, n) for n in range(engines)]
        time.sleep(2)
        cluster.stop("fast")
        went_down = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        cluster.start()
        came_back = time.monotonic()
        time.sleep(RECOVERY_LIMIT_SECONDS + 1)
        stopping.set()
        for future in running:
            future.result()

    answers = [answer for *_, answer in log]
    statuses = Counter(answer.status for answer in answers)
    assert set(statuses) <= {200, 201, 409, 503}, (statuses, portal.log_tail())
    assert {answer.code for answer in answers if answer.status == 409} <= {"session_quota_exceeded"}
    unavailable = [answer for answer in answers if answer.status == 503]
    assert unavailable, "the outage was not seen"
    for answer in unavailable:
        assert_unavailable(answer)
    # Answered again within the limit: no 503 to a call made once the limit had passed since the
    # restart, and each engine had an answer other than 503 within it. (Without CONN_HEALTH_CHECKS,
    # the settings' default, a worker thread's first request after the restart may still find its
    # dead connection: a 503, after which Django replaces the connection.)
    late = [answer for _, started, _, answer in log if started > came_back + RECOVERY_LIMIT_SECONDS]
    assert late and not [answer for answer in late if answer.status == 503]
    recovered = {}
    for n, _, finished, answer in log:
        if finished > came_back and answer.status != 503 and n not in recovered:
            recovered[n] = finished - came_back
    assert len(recovered) == engines and max(recovered.values()) <= RECOVERY_LIMIT_SECONDS, recovered
    # Counts exact: every granted session is in the database, each once, and released; none other.
    rows = sessions(cluster, pool)
    assert sorted(public_id for public_id, _, _ in rows) == sorted(granted)
    assert len(set(granted)) == len(granted)
    assert sorted(released) == sorted(granted)
    assert all(ended and reason == "released" for _, ended, reason in rows)
    most_live = most_at_once(held)
    assert most_live <= quota
    record(
        f"database stopped for {OUTAGE_SECONDS:g} s under 6 engines (activate, heartbeat, release; quota {quota})",
        requests=len(answers),
        granted=len(granted),
        refused=statuses[409],
        unavailable_503=len(unavailable),
        server_errors=0,
        over_grants=max(0, most_live - quota),
        seconds_to_recover=round(max(recovered.values()), 2),
        outage_seconds=round(came_back - went_down, 1),
        faults_survived=1,
    )


def test_a_database_restarted_while_the_portal_idles_is_answered_again_at_the_first_retry(cluster, portal):
    """Every request thread holds a persistent connection when the database restarts. The next calls
    find their connection dead: each is answered, at worst with the contract's 503 and Retry-After
    (one per thread; none with DATABASE_URL's conn_health_checks=true), and its retry is granted.
    Nothing is granted twice or lost."""
    organization = seed(cluster, quota=100, machine_quota=100, members=16)

    def engine(n):
        return activate(portal.port, organization["keys"][n], f"agent-{n}")

    warm = all_at_once([partial(engine, n) for n in range(16)])  # more calls than threads: all connect
    assert [answer.status for answer in warm] == [201] * 16
    cluster.stop("fast")
    cluster.start()
    after = all_at_once([partial(engine, n) for n in range(16)])
    assert {answer.status for answer in after} <= {201, 503}, Counter(answer.status for answer in after)
    unavailable = [n for n, answer in enumerate(after) if answer.status == 503]
    for n in unavailable:
        assert_unavailable(after[n])
    assert len(unavailable) <= 8  # one per request thread (2 workers x 4 threads)
    retries = [engine(n) for n in unavailable]
    assert [answer.status for answer in retries] == [201] * len(unavailable)
    assert cluster.query(
        "SELECT count(*) FROM sessions_app_enginesession WHERE pool_id = %s", (organization["pool"],), DATABASE
    ) == [(32,)]
    record(
        "database restarted while idle, 16 activations after it",
        requests=32 + len(retries),
        granted=32,
        unavailable_503=len(unavailable),
        server_errors=0,
        faults_survived=1,
    )


def test_a_worker_killed_mid_activation_leaves_no_half_session_and_the_retry_gets_one_answer(cluster, portal):
    """An engine restarts on its machine (release_previous) with an Idempotency-Key; the worker serving
    it is killed (SIGKILL) after it ended the previous session and before it granted the new one. The
    previous session is still live (nothing half-written), and the retry with the same key is granted
    at once and answered the same every time after: one new session, the previous one released."""
    organization = seed(cluster, quota=10, machine_quota=10, members=1)
    pool, key = organization["pool"], organization["keys"][0]
    first = activate(portal.port, key, "ci-1")
    assert first.status == 201, first
    previous = first.json()["session"]["id"]
    holder = cluster.connect(DATABASE, autocommit=False)
    with holder.cursor() as cursor:
        # The machine's row is where the activation will wait, half done: its transaction has ended
        # the previous session and will next update the machine and create the new session.
        cursor.execute("SELECT id FROM sessions_app_machine WHERE pool_id = %s FOR UPDATE", (pool,))
    client_port = []
    restart = {"product": "RE", "machine_id": "ci-1", "release_previous": True}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "restart-ci-1"}
    with ThreadPoolExecutor(1) as thread:
        future = thread.submit(
            call, portal.port, "POST", "/api/v1/engine/activate", restart, headers, 60, client_port.append
        )
        backend = wait_for(lambda: waiting_on_locks(cluster, "sessions_app_machine"), "the activation to wait")[0][0]
        # Half-way: its transaction has written (ended the previous session), uncommitted.
        assert cluster.query("SELECT backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = %s", (backend,)) == [
            (True,)
        ]
        assert sessions(cluster, pool) == [(previous, False, "")]
        worker = portal.worker_serving(wait_for(lambda: client_port, "the connection")[0])
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        killed = future.result()
    holder.rollback()
    holder.close()
    assert killed.status == 0, killed  # the engine saw its connection drop, no answer
    # The dead worker's transaction ends with its connection, rolled back.
    wait_for(
        lambda: not cluster.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)), "the backend to end"
    )
    assert sessions(cluster, pool) == [(previous, False, "")]

    retries = [call(portal.port, "POST", "/api/v1/engine/activate", restart, headers) for _ in range(3)]
    assert [retry.status for retry in retries] == [201] * 3, retries[0]
    assert all(retry.json() == retries[0].json() for retry in retries)
    granted = retries[0].json()["session"]["id"]
    assert sorted(sessions(cluster, pool)) == sorted([(previous, True, "released"), (granted, False, "")])
    record(
        "gunicorn worker killed (SIGKILL) mid-activation, then 3 retries with its Idempotency-Key",
        requests=5,
        granted=2,
        lost_or_duplicated_sessions=0,
        half_written_sessions=0,
        distinct_answers_to_retries=len({json.dumps(r.json(), sort_keys=True) for r in retries}),
        server_errors=0,
        faults_survived=1,
    )
