"""The engine API's hot path (sessions_app/hotpath.py): what activation, heartbeat and release cost
in queries, pinned, and that the one-round-trip statements answer and write what the general path
does. On PostgreSQL a granted RE activation is one round trip after the key's lookup, and a heartbeat
of a live session and a release are one statement that authenticates the key too; SQLite takes the
general path (actions.py) for all of them."""

import json
import threading

import psycopg2
import pytest
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from licenses.models import LicensePool
from sessions_app import hotpath
from sessions_app.models import EngineSession, Machine
from tests import factories

from .conftest import Engine
from .test_queue import poll


def on_postgresql(postgresql, sqlite):
    return postgresql if connection.vendor == "postgresql" else sqlite


@pytest.fixture
def roomy_pool(re_pool):
    re_pool.quota = 50
    re_pool.machine_quota = 50
    re_pool.save()
    return re_pool


def test_activation_costs_two_queries_on_postgresql(engine, roomy_pool, django_assert_num_queries):
    """The key's lookup, then the lock, the counts, the machine and the session in one round trip: for
    a new machine and for a known one alike (the key was used before, so its last_used_at is fresh)."""
    engine.activate(machine_id="known")
    with django_assert_num_queries(on_postgresql(2, 12)):
        assert engine.activate(machine_id="new").status_code == 201
    with django_assert_num_queries(on_postgresql(2, 11)):
        assert engine.activate(machine_id="known").status_code == 201


def test_joining_the_line_costs_the_attempt_and_the_general_path(engine, re_pool, django_assert_num_queries):
    """A request that must wait pays the hot path's attempt (which writes nothing) before the general
    path decides: one statement more than on SQLite. Its poll that is still waiting skips the attempt
    (a ticket always takes the general path)."""
    re_pool.machine_quota = 20
    re_pool.save()
    factories.EngineSessionFactory.create_batch(3, pool=re_pool)
    assert engine.activate(machine_id="first", queue=True).status_code == 202  # the hour's first alerts
    with django_assert_num_queries(on_postgresql(14, 13)):
        response = engine.activate(machine_id="waiter", queue=True)
    assert response.status_code == 202
    ticket = response.json()["queued"]["ticket"]
    with django_assert_num_queries(12):
        assert poll(engine, ticket, "waiter").status_code == 202


def test_heartbeat_and_release_cost_one_query_on_postgresql(engine, roomy_pool, django_assert_num_queries):
    """The key is authenticated by the statement that extends the lease or ends the session."""
    session_id = engine.activate(machine_id="agent").json()["session"]["id"]
    with django_assert_num_queries(on_postgresql(1, 5)):
        assert engine.post(f"engine/sessions/{session_id}/heartbeat").status_code == 200
    with django_assert_num_queries(on_postgresql(1, 10)):
        assert engine.post(f"engine/sessions/{session_id}/release").status_code == 200


def masked(body):
    """An activation's answer without what differs between two grants (ids, times, machine id)."""
    body = json.loads(json.dumps(body))
    body["session"]["id"] = body["session"]["id"][:2]
    for path in (("session", "lease_expires_at"), ("machine", "registered_at"), ("machine", "machine_id")):
        body[path[0]][path[1]] = "…"
    return body


def written(machine_id):
    machine = Machine.objects.get(machine_id=machine_id, deactivated_at__isnull=True)
    session = EngineSession.objects.filter(machine=machine).latest("id")
    return {
        "machine": (machine.hostname, machine.user_id, machine.ephemeral),
        "session": (session.hostname, session.engine_version, session.user_id, session.ended_at, session.end_reason),
        "lease": round((session.lease_expires_at - session.started_at).total_seconds()),
        "heartbeat_is_start": session.last_heartbeat_at == session.started_at,
    }


@pytest.mark.postgres
@pytest.mark.parametrize(
    "fields",
    [{}, {"hostname": "ci-7", "engine_version": "10.1"}, {"ephemeral": True}, {"queue": True, "hostname": "h"}],
)
def test_a_granted_activation_answers_and_writes_what_the_general_path_does(engine, roomy_pool, monkeypatch, fields):
    """The same requests, once through the general path (the hot path switched off) and once through
    the hot path, for a new machine and then for the same machine known: same answers but for ids
    and times, same rows."""
    outcomes = {}
    for hot in (False, True):
        monkeypatch.setattr(hotpath, "_enabled", lambda hot=hot: hot)
        machine_id = f"agent-{hot}"
        with CaptureQueriesContext(connection) as queries:
            first = engine.activate(machine_id=machine_id, **fields)
            known = engine.activate(machine_id=machine_id, **{**fields, "hostname": fields.get("hostname", "") + "x"})
        assert (len(queries.captured_queries) == 4) is hot
        assert first.status_code == known.status_code == 201
        outcomes[hot] = (masked(first.json()), masked(known.json()), written(machine_id))
    general, hot = outcomes[False], outcomes[True]
    # The hot path's grants come after the general path's two, so its figures are two higher.
    for answer in hot[:2]:
        answer["usage"]["sessions"]["used"] -= 2
        answer["usage"]["machines"]["used"] -= 1
    assert hot == general


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_granted_activation_waits_for_the_pools_lock_and_counts_what_committed_meanwhile(api_key, re_pool):
    """The one-statement activation takes the pool's row lock like every other change of the pool:
    while another transaction holds it (here: one granting the last license) the activation waits,
    and once that commits it counts the license taken and refuses. Without the lock it would grant a
    second license of a quota of one."""
    re_pool.quota = 1
    re_pool.machine_quota = 10
    re_pool.save()
    answers = []

    def activate():
        try:
            answers.append(Engine(Client(), api_key.raw_key).activate(machine_id="waiting").status_code)
        finally:
            connection.close()

    with transaction.atomic():
        LicensePool.objects.select_for_update().get(pk=re_pool.pk)
        factories.EngineSessionFactory(pool=re_pool)  # the license this transaction grants
        waiting = threading.Thread(target=activate)
        waiting.start()
        waiting.join(timeout=1.5)
        assert waiting.is_alive(), f"the activation did not wait for the pool's lock: {answers}"
    waiting.join(timeout=30)
    assert answers == [409]
    assert EngineSession.objects.filter(pool=re_pool, ended_at__isnull=True).count() == 1


def lease_and_end(session_id):
    return EngineSession.objects.filter(public_id=session_id).values_list("lease_expires_at", "ended_at").get()


@pytest.mark.parametrize("path", ["heartbeat", "release"])
def test_a_heartbeat_or_release_the_statement_cannot_do_is_answered_as_the_general_path_answers(
    engine, client, roomy_pool, member_user, organization, other_organization, monkeypatch, path
):
    """The statement that authenticates and extends (or ends) in one finds no row for a bad key, a
    revoked or expired one, another person's key or a key of another organization: it changes nothing,
    and the general path gives the same answer as with the hot path switched off."""
    session_id = engine.activate(machine_id="agent").json()["session"]["id"]
    other_member = factories.MembershipFactory(organization=organization).user
    factories.MembershipFactory(organization=other_organization, user=member_user)
    revoked = factories.ApiKeyFactory(user=member_user)
    revoked.revoked_at = revoked.created_at
    revoked.save()
    keys = {
        "unknown": "kat_" + "x" * 40,
        "revoked": revoked.raw_key,
        "another person's": factories.ApiKeyFactory(user=other_member).raw_key,
        "another organization's": factories.ApiKeyFactory(user=member_user, organization=other_organization).raw_key,
    }
    before = lease_and_end(session_id)
    for hot in on_postgresql((True, False), (False,)):
        monkeypatch.setattr(hotpath, "_enabled", lambda hot=hot: hot)
        answers = {}
        for name, raw_key in keys.items():
            response = Engine(client, raw_key).post(f"engine/sessions/{session_id}/{path}")
            answers[name] = (response.status_code, response.json()["error"]["code"])
        assert lease_and_end(session_id) == before
        assert answers == {
            "unknown": (401, "invalid_api_key"),
            "revoked": (401, "invalid_api_key"),
            "another person's": (404, "session_not_found"),
            "another organization's": (404, "session_not_found"),
        }, f"hot path {'on' if hot else 'off'}"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_round_trip_that_fails_while_preparing_leaves_the_connection_usable(engine, roomy_pool):
    """The statements are prepared on each connection in the round trip that first runs them, and a
    PREPARE outlives the rollback of a failure after it. Here the first activation on a new connection
    gives up waiting for the pool's lock (another transaction holds it): 503, nothing granted. The
    next activation on the same connection must still be granted, not trip over its own earlier
    PREPARE ("prepared statement already exists")."""
    connection.close()
    holder = psycopg2.connect(**connection.get_connection_params())
    try:
        holder.cursor().execute("SELECT 1 FROM licenses_licensepool WHERE id = %s FOR UPDATE", [roomy_pool.pk])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        assert engine.activate(machine_id="agent").status_code == 503
    finally:
        holder.rollback()
        holder.close()
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = 0")
    response = engine.activate(machine_id="agent")
    assert response.status_code == 201
    session_id = response.json()["session"]["id"]
    assert engine.post(f"engine/sessions/{session_id}/heartbeat").status_code == 200
    assert engine.post(f"engine/sessions/{session_id}/release").status_code == 200
    assert EngineSession.objects.filter(pool=roomy_pool).count() == 1
