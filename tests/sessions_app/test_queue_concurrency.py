"""The queue under real concurrency, on PostgreSQL: many engines polling at once, each request on
its own connection. What must hold: nobody is granted out of order, no license is held for a
dropped ticket past its deadline, and the quota is never exceeded."""

import random
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Q
from django.db.models.functions import Now
from django.test import Client

from sessions_app.models import EngineSession, QueueTicket
from tests import factories
from tests.concurrency import MAX_CONNECTIONS, pool_lock_unavailable, run_together

from .conftest import Engine

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def request(raw_key, **fields):
    """One activate call from its own test client; (status, body)."""
    response = Engine(Client(), raw_key).activate(**fields)
    return response.status_code, response.json()


def fill(pool, count):
    holder = factories.MembershipFactory(organization=pool.organization).user
    return [factories.EngineSessionFactory(pool=pool, user=holder) for _ in range(count)]


def test_engines_polling_at_once_are_granted_oldest_first_and_never_past_the_quota(member_user, organization):
    """Twenty engines wait for a full pool of five. Round after round a few licenses free up, one
    waiting engine may go silent past its poll_before, and every waiting engine polls at once while
    newcomers without queue try their luck: each round exactly the oldest live tickets, as many as
    licenses are free, are granted (whatever order the polls reach the server in), the silent one
    is never granted and hears 404, newcomers take only the licenses free beyond the line, and the
    quota holds."""
    quota = 5
    pool = factories.LicensePoolFactory(organization=organization, quota=quota, machine_quota=500)
    raw_key = factories.ApiKeyFactory(user=member_user).raw_key
    held = fill(pool, quota)
    joined = run_together([lambda n=n: request(raw_key, machine_id=f"agent-{n}", queue=True) for n in range(20)])
    assert [status for status, _ in joined] == [202] * 20
    machine_of = {body["queued"]["ticket"]: f"agent-{n}" for n, (_, body) in enumerate(joined)}
    line = list(QueueTicket.objects.order_by("id").values_list("public_id", flat=True))
    assert sorted(line) == sorted(machine_of)
    rng = random.Random(11)
    rounds = spare_rounds = 0

    while line:
        rounds += 1
        releasing = held[: rng.randint(2, 4)]
        EngineSession.objects.filter(pk__in=[session.pk for session in releasing]).end("released")
        held = held[len(releasing) :]
        silent = None
        if len(line) > 2 and rng.random() < 0.4:
            silent = line.pop(rng.randrange(len(line)))
            QueueTicket.objects.filter(public_id=silent).update(poll_before=Now() - timedelta(milliseconds=1))
        free = quota - EngineSession.objects.filter(pool=pool).live().count()
        expected = set(line[:free])

        polls = [(ticket, machine_of[ticket]) for ticket in [*line, *([silent] if silent else [])]]
        rng.shuffle(polls)
        calls = [
            lambda ticket=ticket, machine=machine: request(raw_key, machine_id=machine, queue=True, ticket=ticket)
            for ticket, machine in polls
        ]
        calls += [lambda n=n: request(raw_key, machine_id=f"newcomer-{n}") for n in range(3)]
        answers = run_together(calls)

        by_ticket = dict(zip([ticket for ticket, _ in polls], answers[: len(polls)], strict=True))
        granted = {ticket for ticket, (status, _) in by_ticket.items() if status == 201}
        assert granted == expected, f"round {rounds}: granted {len(granted)}, expected the {free} oldest"
        assert all(status == 202 for ticket, (status, _) in by_ticket.items() if ticket not in granted | {silent})
        if silent:
            assert by_ticket[silent][0] == 404
            assert by_ticket[silent][1]["error"]["code"] == "ticket_not_found"
        # Newcomers take only licenses no ticket can take: as many as are free beyond the line.
        spare = max(0, free - len(line))
        spare_rounds += spare > 0
        admitted = [body["session"]["id"] for status, body in answers[len(polls) :] if status == 201]
        assert len(admitted) == min(spare, 3), f"round {rounds}: {len(admitted)} newcomers admitted, {spare} spare"
        for status, body in answers[len(polls) :]:
            assert status == 201 or body["error"]["code"] == "session_quota_exceeded"
        assert EngineSession.objects.filter(pool=pool).live().count() <= quota
        held += list(EngineSession.objects.filter(Q(queue_ticket__public_id__in=granted) | Q(public_id__in=admitted)))
        line = [ticket for ticket in line if ticket not in granted]

    assert rounds >= 4 and spare_rounds >= 1
    assert EngineSession.objects.filter(pool=pool).live().count() <= quota
    assert not QueueTicket.objects.waiting().exists()


def test_engines_that_poll_on_their_own_are_served_in_line_order(member_user, organization):
    """Engines with jobs to run wait for a pool of four, each polling on its own schedule, holding
    its license a moment and releasing it. A watcher counts live sessions all along: never more than
    four. Every wait is granted, and no ticket is granted before more than three older ones (at the
    moment of its grant every older ticket still waiting had a license set aside, and at most
    quota - 1 can)."""
    quota, engines, jobs_each = 4, MAX_CONNECTIONS - 4, 2
    pool = factories.LicensePoolFactory(organization=organization, quota=quota, machine_quota=500)
    raw_key = factories.ApiKeyFactory(user=member_user).raw_key
    done = threading.Event()
    observed = []

    def watch():
        try:
            while not done.is_set():
                observed.append(EngineSession.objects.filter(pool_id=pool.pk).live().count())
                time.sleep(0.005)
        finally:
            connection.close()

    def engine(n):
        rng = random.Random(n)
        client = Engine(Client(), raw_key)
        for job in range(jobs_each):
            fields = {"machine_id": f"agent-{n}", "queue": True}
            response = client.activate(**fields)
            while response.status_code == 202:
                time.sleep(rng.uniform(0.01, 0.05))
                response = client.activate(**fields, ticket=response.json()["queued"]["ticket"])
            assert response.status_code == 201, response.json()
            # Long enough, against an activation that is one round trip, for four licenses to be
            # too few for sixteen engines: the line must form for the test to say anything.
            time.sleep(rng.uniform(0.2, 0.4))
            assert client.post(f"engine/sessions/{response.json()['session']['id']}/release").status_code == 200
        return n

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcomes = run_together([lambda n=n: engine(n) for n in range(engines)])
    finally:
        done.set()
        watcher.join()

    assert outcomes == list(range(engines))
    assert observed and max(observed) <= quota
    tickets = list(QueueTicket.objects.filter(pool=pool).order_by("id").values_list("outcome", "session_id"))
    assert tickets and {outcome for outcome, _ in tickets} == {"granted"}
    # Session ids are drawn under the pool's lock, in the order grants were decided.
    grant_order = [session_id for _, session_id in tickets]
    for position, session_id in enumerate(grant_order):
        older_granted_later = sum(1 for older in grant_order[:position] if older > session_id)
        assert older_granted_later <= quota - 1


def test_a_silent_engines_license_is_free_within_moments_of_its_deadline(member_user, organization):
    """A license is set aside for the head of the line, whose engine then goes silent. A newcomer
    asking every few milliseconds is refused until the ticket's poll_before passes, and granted
    right after it, with no cleanup run."""
    pool = factories.LicensePoolFactory(organization=organization, quota=1, machine_quota=10)
    raw_key = factories.ApiKeyFactory(user=member_user).raw_key
    (session,) = fill(pool, 1)
    status, body = request(raw_key, machine_id="silent", queue=True)
    assert status == 202
    EngineSession.objects.filter(pk=session.pk).end("released")
    QueueTicket.objects.update(poll_before=Now() + timedelta(seconds=1))
    deadline = QueueTicket.objects.get().poll_before.timestamp()

    answers = []
    while not answers or answers[-1][2] != 201:
        sent = time.time()
        status, _ = request(raw_key, machine_id="newcomer")
        answers.append((sent, time.time(), status))
        assert sent < deadline + 5, "the license stayed set aside for a dropped ticket"
        time.sleep(0.01)

    # The database and this test read the same clock. Refused while the license was set aside (at
    # least the first request, sent a second before the deadline), granted to the first request
    # that reached the server after it.
    *refused, (sent, answered, _) = answers
    assert refused and all(status == 409 for _, _, status in refused)
    assert answered >= deadline
    assert sent <= deadline + 1
    assert request(raw_key, machine_id="silent", queue=True, ticket=body["queued"]["ticket"])[0] == 404


def test_a_poll_answered_503_does_not_move_its_deadline(member_user, organization):
    """While the pool's row is locked past the database's lock timeout, a poll fails with 503 and
    its ticket's poll_before stays where the last answered poll put it."""
    pool = factories.LicensePoolFactory(organization=organization, quota=1, machine_quota=10)
    raw_key = factories.ApiKeyFactory(user=member_user).raw_key
    fill(pool, 1)
    ticket = request(raw_key, machine_id="agent-1", queue=True)[1]["queued"]["ticket"]
    deadline = QueueTicket.objects.get().poll_before
    with pool_lock_unavailable(pool):
        response = Engine(Client(), raw_key).activate(machine_id="agent-1", queue=True, ticket=ticket)
    assert response.status_code == 503
    assert QueueTicket.objects.get().poll_before == deadline
    assert request(raw_key, machine_id="agent-1", queue=True, ticket=ticket)[0] == 202
