"""The engine API's hot path (sessions_app/hotpath.py): what activation, heartbeat and release cost
in queries, pinned, and that the one-round-trip statements answer and write what the general path
does. On PostgreSQL a granted RE activation, a heartbeat of a live session and a release are one
statement after the key's lookup; SQLite takes the general path (actions.py) for all of them."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sessions_app import hotpath
from sessions_app.models import EngineSession, Machine
from tests import factories

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


def test_heartbeat_and_release_cost_two_queries_on_postgresql(engine, roomy_pool, django_assert_num_queries):
    session_id = engine.activate(machine_id="agent").json()["session"]["id"]
    with django_assert_num_queries(on_postgresql(2, 5)):
        assert engine.post(f"engine/sessions/{session_id}/heartbeat").status_code == 200
    with django_assert_num_queries(on_postgresql(2, 10)):
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
