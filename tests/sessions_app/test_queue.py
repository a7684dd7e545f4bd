"""The contract's "Waiting for a license": queue, tickets, first come first served, dropped and
expired tickets, on SQLite and PostgreSQL alike. Time passing is simulated by moving a ticket's
deadlines into the past in the database, whose clock every rule reads."""

import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from licenses.actions import remove_ticket
from organizations.audit import Action
from organizations.models import AuditEvent
from sessions_app import queue as queue_rules
from sessions_app.actions import expire_sessions
from sessions_app.models import EngineSession, QueueTicket, QueueWaitHour, QuotaRefusalHour
from tests import factories

from .conftest import Engine

TICKET = re.compile(r"q_[A-Za-z0-9_\-]{1,38}")


@pytest.fixture
def full_pool(re_pool):
    """The RE pool (quota 3) with every license held by another member's sessions (`held`)."""
    re_pool.machine_quota = 20
    re_pool.save()
    holder = factories.MembershipFactory(organization=re_pool.organization).user
    re_pool.held = [factories.EngineSessionFactory(pool=re_pool, user=holder) for _ in range(3)]
    return re_pool


def queued(response):
    assert response.status_code == 202, response.json()
    body = response.json()
    assert set(body) == {"queued"}
    return body["queued"]


def error_of(response, status):
    assert response.status_code == status, response.json()
    return response.json()["error"]


def join(engine, machine_id="agent-1", **fields):
    return queued(engine.activate(machine_id=machine_id, queue=True, **fields))


def poll(engine, ticket, machine_id="agent-1", **fields):
    return engine.activate(machine_id=machine_id, queue=True, ticket=ticket, **fields)


def release(sessions, count=1):
    """The engines holding `count` of the pool's licenses release them."""
    for session in sessions[:count]:
        EngineSession.objects.filter(pk=session.pk).end("released")
    del sessions[:count]


def move_deadline(ticket_id, field, seconds_from_now):
    """Make time pass for one ticket: its deadline is now `seconds_from_now` by the database's clock."""
    QueueTicket.objects.filter(public_id=ticket_id).update(**{field: Now() + timedelta(seconds=seconds_from_now)})


# Joining


def test_a_full_pool_puts_a_queued_request_in_line(engine, full_pool):
    """202 with Retry-After equal to retry_after_seconds, a ticket, the position and the deadlines."""
    response = engine.activate(queue=True, max_wait_seconds=600)
    place = queued(response)
    ticket = QueueTicket.objects.get()
    assert TICKET.fullmatch(place["ticket"]) and place["ticket"] == ticket.public_id
    assert place["position"] == 1
    assert place["waiting"] == 1
    assert response["Retry-After"] == str(place["retry_after_seconds"])
    assert place["retry_after_seconds"] == 2
    assert ticket.poll_before == ticket.joined_at + timedelta(seconds=2 + 30)
    assert ticket.expires_at == ticket.joined_at + timedelta(seconds=600)
    assert place["poll_before"] == ticket.poll_before.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert place["expires_at"] == ticket.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert not EngineSession.objects.filter(user=ticket.user).exists()


def test_joining_the_line_is_audited_and_polling_is_not(engine, full_pool, organization, member_user):
    ticket = join(engine, "agent-1")["ticket"]
    queued(poll(engine, ticket))
    (event,) = AuditEvent.objects.filter(action=Action.ACTIVATION_QUEUED)
    assert (event.organization, event.actor) == (organization, member_user)
    assert event.after["ticket"] == ticket and event.after["machine_id"] == "agent-1"
    assert event.after["details"] == {"quota": 3, "live_sessions": 3, "offline_licenses": 0, "waiting": 0}
    assert "position 1" in event.after["message"]


def test_the_longest_wait_defaults_to_half_an_hour(engine, full_pool):
    join(engine)
    ticket = QueueTicket.objects.get()
    assert ticket.expires_at - ticket.joined_at == timedelta(seconds=1800)


def test_a_queued_request_with_a_license_free_is_granted_at_once(engine, re_pool):
    """Nobody waits and a license is free: 201, no ticket."""
    assert engine.activate(queue=True).status_code == 201
    assert not QueueTicket.objects.exists()


def test_newcomers_join_the_end_of_the_line(client, full_pool, member_user):
    """Each newcomer gets the next position; waiting counts them all."""
    engine = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    places = [join(engine, f"agent-{n}") for n in range(4)]
    assert [(place["position"], place["waiting"]) for place in places] == [(1, 1), (2, 2), (3, 3), (4, 4)]


def test_kse_answers_a_queue_request_as_without_it(engine, kse_pool, member_user):
    """A licensed user is never refused for quota, queue or not; an unlicensed one is refused as usual."""
    assert error_of(engine.activate(product="KSE", queue=True), 403)["code"] == "not_licensed"
    factories.LicensedUserFactory(pool=kse_pool, user=member_user)
    assert engine.activate(product="KSE", queue=True).status_code == 201
    assert error_of(engine.activate(product="KSE", ticket="q_abc"), 404)["code"] == "ticket_not_found"
    assert not QueueTicket.objects.exists()


def test_a_queued_request_is_refused_for_the_machine_quota_first(engine, full_pool):
    """With both quotas full, a queue request for a new machine is refused for the machine quota (it
    could never be granted) and gets no ticket; without queue the session quota answers first."""
    pool = full_pool
    pool.machine_quota = 3
    pool.save()
    assert error_of(engine.activate(machine_id="new-one"), 409)["code"] == "session_quota_exceeded"
    assert error_of(engine.activate(machine_id="new-one", queue=True), 409)["code"] == "machine_quota_exceeded"
    assert not QueueTicket.objects.exists()
    # A machine already registered is no new machine: it waits.
    assert join(engine, machine_id=pool.held[0].machine.machine_id)["position"] == 1


@pytest.mark.parametrize("refusal", ["expired", "allow_list", "not_a_member"])
def test_a_queued_request_is_refused_as_usual_for_anything_but_the_session_quota(
    engine, full_pool, member_user, refusal
):
    pool = full_pool
    if refusal == "expired":
        pool.starts_at, pool.expires_at = pool.starts_at - timedelta(days=400), pool.starts_at - timedelta(days=1)
        expected = (403, "license_expired")
    elif refusal == "allow_list":
        pool.machine_allow_list = "ci-*"
        expected = (403, "machine_not_allowed")
    else:
        member_user.memberships.update(removed_at=Now())
        expected = (404, "organization_not_found")
    pool.save()
    assert error_of(engine.activate(queue=True), expected[0])["code"] == expected[1]
    assert not QueueTicket.objects.exists()


# Polling


def test_a_poll_is_answered_202_until_a_license_is_free_then_201(engine, full_pool):
    """The poll is the same request plus the ticket; once a license frees up it is granted exactly
    as an ordinary activation and the ticket is used up: every later poll answers 404."""
    pool = full_pool
    ticket = join(engine)["ticket"]
    again = queued(poll(engine, ticket))
    assert (again["ticket"], again["position"], again["waiting"]) == (ticket, 1, 1)

    release(pool.held)
    response = poll(engine, ticket, hostname="agent-1.ci", engine_version="10.2")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["usage"]["sessions"] == {"used": 3, "quota": 3}
    session = EngineSession.objects.get(public_id=body["session"]["id"])
    assert (session.hostname, session.engine_version) == ("agent-1.ci", "10.2")
    row = QueueTicket.objects.get(public_id=ticket)
    assert (row.outcome, row.session_id) == ("granted", session.pk)
    # The usage page's waits: one engine, in the hour it was granted, after its wait.
    (waited,) = QueueWaitHour.objects.filter(pool=pool)
    assert waited.waits == 1
    assert waited.hour == row.ended_at.replace(minute=0, second=0, microsecond=0)
    assert waited.wait_seconds == int((row.ended_at - row.joined_at).total_seconds())
    assert error_of(poll(engine, ticket), 404)["code"] == "ticket_not_found"
    assert EngineSession.objects.live().count() == 3


def test_a_poll_updates_the_deadline_and_the_figures(engine, full_pool):
    first = join(engine, "agent-1")["ticket"]
    second = join(engine, "agent-2")["ticket"]
    QueueTicket.objects.update(poll_before=Now() + timedelta(seconds=5))
    place = queued(poll(engine, second, "agent-2", hostname="renamed"))
    ticket = QueueTicket.objects.get(public_id=second)
    assert (place["position"], place["waiting"]) == (2, 2)
    assert ticket.poll_before == ticket.last_polled_at + timedelta(seconds=place["retry_after_seconds"] + 30)
    assert ticket.hostname == "renamed"
    assert poll(engine, first, "agent-1").status_code == 202


@pytest.mark.parametrize(
    "change",
    [
        {"machine_id": "agent-2"},
        {"product": "KSE"},
        {"org_id": "other"},
        {"user": "someone else"},
        {"ticket": "q_" + "x" * 24},
    ],
    ids=["machine", "product", "organization", "user", "unknown"],
)
def test_a_poll_that_is_not_the_tickets_request_is_404(
    client, engine, full_pool, member_user, other_organization, change
):
    """A ticket belongs to its user, product, organization and machine id."""
    pool = full_pool
    kse = factories.LicensePoolFactory(organization=pool.organization, product="KSE")
    factories.LicensedUserFactory(pool=kse, user=member_user)
    factories.MembershipFactory(organization=other_organization, user=member_user)
    factories.LicensePoolFactory(organization=other_organization, product="RE")
    ticket = join(engine, org_id=pool.organization.public_id)["ticket"]
    release(pool.held)  # a license is set aside for the ticket: a wrong poll must not take it
    request = {"machine_id": "agent-1", "org_id": pool.organization.public_id, "ticket": ticket, "queue": True}
    caller = engine
    if "user" in change:
        colleague = factories.MembershipFactory(organization=pool.organization).user
        caller = Engine(client, factories.ApiKeyFactory(user=colleague).raw_key)
    elif "org_id" in change:
        request["org_id"] = other_organization.public_id
    else:
        request.update(change)
    response = caller.activate(**request)
    assert error_of(response, 404)["code"] == "ticket_not_found"
    assert poll(engine, ticket, org_id=pool.organization.public_id).status_code == 201


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ticket", "abc"),
        ("ticket", "q_"),
        ("ticket", ""),
        ("ticket", "q_" + "a" * 39),
        ("ticket", "q_a b"),
        ("ticket", 12),
        ("queue", "yes"),
        ("max_wait_seconds", 0),
        ("max_wait_seconds", 86_401),
        ("max_wait_seconds", "60"),
        ("max_wait_seconds", 1.5),
        ("max_wait_seconds", True),
    ],
)
def test_malformed_queue_fields_are_invalid(engine, full_pool, field, value):
    """400 invalid_request naming the field, and nothing changes."""
    error = error_of(engine.activate(**{"queue": True, field: value}), 400)
    assert error["code"] == "invalid_request"
    assert field in error["details"]["fields"]
    assert not QueueTicket.objects.exists()


@pytest.mark.parametrize("seconds", [1, 86_400])
def test_the_longest_wait_runs_from_one_second_to_a_day(engine, full_pool, seconds):
    join(engine, max_wait_seconds=seconds)
    ticket = QueueTicket.objects.get()
    assert ticket.expires_at - ticket.joined_at == timedelta(seconds=seconds)


# First come, first served


def test_free_licenses_are_set_aside_for_the_oldest_tickets(client, engine, full_pool, member_user):
    """With k licenses free the k oldest tickets are granted at their next poll, whatever order they
    poll in; no younger ticket and no request without a ticket takes a license set aside."""
    pool = full_pool
    tickets = [join(engine, f"agent-{n}")["ticket"] for n in range(4)]
    newcomer = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)

    release(pool.held, 2)
    # The youngest polls first: two licenses are free, both set aside for tickets 0 and 1.
    assert queued(poll(engine, tickets[3], "agent-3"))["position"] == 4
    assert queued(poll(engine, tickets[2], "agent-2"))["position"] == 3
    refusal = error_of(newcomer.activate(machine_id="newcomer"), 409)
    assert refusal["code"] == "session_quota_exceeded"
    assert refusal["details"]["waiting"] == 4
    assert "set aside" in refusal["message"]
    assert queued(newcomer.activate(machine_id="newcomer", queue=True))["position"] == 5
    assert poll(engine, tickets[1], "agent-1").status_code == 201
    assert poll(engine, tickets[0], "agent-0").status_code == 201
    # The line moved up by two.
    assert queued(poll(engine, tickets[2], "agent-2"))["position"] == 1
    assert EngineSession.objects.live().count() == 3


def test_a_request_without_a_ticket_takes_only_a_license_no_ticket_can_take(client, engine, full_pool, member_user):
    """More licenses free than tickets waiting: the newcomer is granted the spare one."""
    pool = full_pool
    ticket = join(engine)["ticket"]
    release(pool.held)
    newcomer = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    assert error_of(newcomer.activate(machine_id="newcomer"), 409)["details"]["waiting"] == 1
    release(pool.held)
    assert newcomer.activate(machine_id="newcomer").status_code == 201
    assert error_of(newcomer.activate(machine_id="newcomer-2"), 409)["code"] == "session_quota_exceeded"
    assert poll(engine, ticket).status_code == 201


def test_the_line_is_per_pool(client, engine, full_pool, member_user, other_organization):
    """Tickets of one organization's pool set nothing aside in another's."""
    factories.MembershipFactory(organization=other_organization, user=member_user)
    other = factories.LicensePoolFactory(organization=other_organization, product="RE", quota=1)
    pool = full_pool
    join(engine, org_id=pool.organization.public_id)
    assert engine.activate(org_id=other.organization.public_id).status_code == 201


def test_a_lowered_quota_grants_nobody_until_licenses_are_free_again(engine, full_pool):
    pool = full_pool
    ticket = join(engine)["ticket"]
    pool.quota = 1
    pool.save()
    release(pool.held, 2)
    assert queued(poll(engine, ticket))["position"] == 1
    release(pool.held)
    assert poll(engine, ticket).status_code == 201


# Dead engines, giving up, removal


def test_a_ticket_not_polled_in_time_is_dropped_and_the_line_moves_up(client, engine, full_pool, member_user):
    """Past its poll_before a ticket is never granted, the license set aside for it is free for the
    next, and its next poll answers 404; no cleanup needs to run first."""
    pool = full_pool
    dead = join(engine, "agent-0")["ticket"]
    alive = join(engine, "agent-1")["ticket"]
    release(pool.held)
    assert queued(poll(engine, alive, "agent-1"))["position"] == 2

    move_deadline(dead, "poll_before", -1)
    assert poll(engine, alive, "agent-1").status_code == 201
    assert error_of(poll(engine, dead, "agent-0"), 404)["code"] == "ticket_not_found"


def test_a_dropped_tickets_license_is_free_for_anyone_the_moment_its_deadline_passes(client, engine, full_pool):
    pool = full_pool
    dead = join(engine, "agent-0")["ticket"]
    release(pool.held)
    assert engine.activate(machine_id="agent-9").status_code == 409
    move_deadline(dead, "poll_before", -1)
    assert engine.activate(machine_id="agent-9").status_code == 201


def test_expire_sessions_marks_what_left_the_line(engine, full_pool):
    """Housekeeping marks tickets past poll_before as dropped (or expired, when their wait ran out
    first) and leaves the rest: a ticket past expires_at but within poll_before gets its 409."""
    dropped = join(engine, "agent-0")["ticket"]
    ran_out = join(engine, "agent-1")["ticket"]
    due_409 = join(engine, "agent-2")["ticket"]
    waiting = join(engine, "agent-3")["ticket"]
    move_deadline(dropped, "poll_before", -5)
    QueueTicket.objects.filter(public_id=ran_out).update(expires_at=Now() - timedelta(seconds=9))
    move_deadline(ran_out, "poll_before", -1)
    move_deadline(due_409, "expires_at", -1)

    assert expire_sessions().queue_tickets_lapsed == 2
    outcomes = dict(QueueTicket.objects.values_list("public_id", "outcome"))
    assert outcomes == {dropped: "dropped", ran_out: "expired", due_409: "", waiting: ""}
    ended = QueueTicket.objects.get(public_id=dropped)
    assert ended.ended_at == ended.poll_before
    assert expire_sessions().queue_tickets_lapsed == 0
    assert error_of(poll(engine, due_409, "agent-2"), 409)["details"]["waited_seconds"] >= 0


def test_the_command_says_how_many_tickets_it_marked(engine, full_pool, capsys):
    join(engine)
    QueueTicket.objects.update(poll_before=Now() - timedelta(seconds=1))
    call_command("expire_sessions")
    assert "marked 1 queue tickets whose engines stopped polling" in capsys.readouterr().out


def test_a_wait_that_runs_out_is_refused_once_then_the_ticket_is_gone(engine, full_pool):
    """The first poll after expires_at answers 409 session_quota_exceeded with details.waited_seconds;
    the ticket has ended and every later poll answers 404."""
    ticket = join(engine, max_wait_seconds=60)["ticket"]
    QueueTicket.objects.update(joined_at=F("joined_at") - timedelta(seconds=61))
    move_deadline(ticket, "expires_at", -1)
    error = error_of(poll(engine, ticket), 409)
    assert error["code"] == "session_quota_exceeded"
    assert error["details"]["waited_seconds"] >= 61
    assert QueueTicket.objects.get().outcome == "expired"
    assert error_of(poll(engine, ticket), 404)["code"] == "ticket_not_found"


def test_a_wait_near_its_end_is_asked_to_poll_at_its_end(engine, full_pool):
    """retry_after_seconds never points past expires_at, so the engine learns its wait is over then."""
    place = join(engine, max_wait_seconds=1)
    assert place["retry_after_seconds"] == 1


def test_an_admin_removes_a_ticket_and_the_line_moves_up(engine, full_pool, owner, organization):
    first = join(engine, "agent-0")["ticket"]
    second = join(engine, "agent-1")["ticket"]
    assert remove_ticket(organization=organization, ticket=QueueTicket.objects.get(public_id=first), actor=owner)
    assert queued(poll(engine, second, "agent-1"))["position"] == 1
    assert error_of(poll(engine, first, "agent-0"), 404)["code"] == "ticket_not_found"
    event = AuditEvent.objects.get(action=Action.QUEUE_TICKET_REMOVED)
    assert (event.actor, event.organization) == (owner, organization)
    assert not remove_ticket(organization=organization, ticket=QueueTicket.objects.get(public_id=first), actor=owner)


def test_only_owners_and_admins_remove_tickets(engine, full_pool, member_user, organization, other_organization):
    from licenses.errors import NotAllowed, TicketNotFound

    join(engine)
    ticket = QueueTicket.objects.get()
    with pytest.raises(NotAllowed):
        remove_ticket(organization=organization, ticket=ticket, actor=member_user)
    with pytest.raises(TicketNotFound):
        remove_ticket(organization=other_organization, ticket=ticket, actor=other_organization.memberships.get().user)
    assert QueueTicket.objects.waiting().count() == 1


def test_removing_a_member_takes_them_out_of_the_line(engine, full_pool, owner, organization, member_user):
    from organizations.actions import remove_member

    ticket = join(engine)["ticket"]
    membership = organization.memberships.get(user=member_user)
    remove_member(organization=organization, actor=owner, membership_id=membership.pk)
    assert QueueTicket.objects.get(public_id=ticket).outcome == "member_removed"


# Idempotency, rate limits


def test_a_202_is_replayed_for_its_idempotency_key_and_takes_one_place(engine, full_pool):
    first = engine.activate(queue=True, headers={"Idempotency-Key": "join-1"})
    again = engine.activate(queue=True, headers={"Idempotency-Key": "join-1"})
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again["Retry-After"] == first["Retry-After"]
    assert QueueTicket.objects.count() == 1
    ticket = first.json()["queued"]["ticket"]
    assert poll(engine, ticket, headers={"Idempotency-Key": "poll-1"}).status_code == 202
    assert poll(engine, ticket, headers={"Idempotency-Key": "poll-2"}).status_code == 202


def test_a_429_does_not_move_poll_before(engine, full_pool, settings):
    """A poll refused by the rate limit leaves the ticket's deadline where the last answered poll
    put it (the engine must still poll in time)."""
    settings.API_RATE_LIMIT = 3
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "queue"}}
    ticket = join(engine)["ticket"]
    for _ in range(10):
        deadline = QueueTicket.objects.get().poll_before
        response = poll(engine, ticket)
        if response.status_code == 429:
            break
    assert response.status_code == 429
    assert QueueTicket.objects.get().poll_before == deadline


# Figures


def test_refusals_for_the_session_quota_are_counted_per_hour(client, engine, full_pool, member_user):
    """A 409 for the session quota (a newcomer, or a wait that ran out) counts; a 202 does not."""
    pool = full_pool
    engine.activate(machine_id="agent-8")
    engine.activate(machine_id="agent-9")
    ticket = join(engine)["ticket"]
    move_deadline(ticket, "expires_at", -1)
    poll(engine, ticket)
    assert list(QuotaRefusalHour.objects.values_list("pool", "refusals")) == [(pool.pk, 3)]
    row = QuotaRefusalHour.objects.get()
    assert (row.hour.minute, row.hour.second, row.hour.microsecond) == (0, 0, 0)


def test_the_line_lists_waiting_tickets_in_order_with_their_places(re_pool, member_user, other_organization):
    """in_line(): only waiting tickets, oldest first, each with its position in its pool's line,
    which narrowing the list (to one person's tickets, to a page) does not change."""
    past = timezone.now() - timedelta(seconds=1)
    first = factories.QueueTicketFactory(pool=re_pool)
    factories.QueueTicketFactory(pool=re_pool, poll_before=past)  # dropped: no place
    factories.QueueTicketFactory(pool=re_pool, ended_at=past, outcome="removed")
    mine = factories.QueueTicketFactory(pool=re_pool, user=member_user)
    last = factories.QueueTicketFactory(pool=re_pool)
    factories.QueueTicketFactory(pool=factories.LicensePoolFactory(organization=other_organization))
    line = list(re_pool.queue_tickets.in_line())
    assert [(ticket.pk, ticket.position) for ticket in line] == [(first.pk, 1), (mine.pk, 2), (last.pk, 3)]
    assert [ticket.position for ticket in re_pool.queue_tickets.in_line().filter(user=member_user)] == [2]
    assert [ticket.position for ticket in re_pool.queue_tickets.in_line()[1:]] == [2, 3]


@pytest.mark.parametrize(
    ("position", "quota", "seconds_left", "expected"),
    [
        (1, 10, 1800, 2),
        (10, 10, 1800, 2),
        (11, 10, 1800, 4),
        (50, 10, 1800, 10),
        (1000, 10, 1800, 30),
        (2, 1, 1800, 4),
        (11, 500, 1800, 4),
        (1, 0, 1800, 2),
        (40, 10, 3.2, 4),
        (40, 10, 0.2, 1),
    ],
)
def test_the_poll_interval_grows_with_the_distance_from_the_head(position, quota, seconds_left, expected):
    """The documented rule: 2 s for the first group of the line (the quota, at most 10), 2 s more per
    group behind it, at most 30 s, and never past the ticket's expiry."""
    assert queue_rules.retry_after_seconds(position=position, quota=quota, seconds_left=seconds_left) == expected


# The hot path


def test_the_pool_figures_statement_counts_what_the_querysets_count(re_pool, other_organization):
    """count_pool's raw statement gives what live(), unexpired() and waiting() give, pool by pool."""
    elsewhere = factories.LicensePoolFactory(organization=other_organization, product="RE")
    past, future = timezone.now() - timedelta(seconds=5), timezone.now() + timedelta(minutes=5)
    for pool, extra in ((re_pool, 0), (elsewhere, 1)):
        factories.EngineSessionFactory.create_batch(2 + extra, pool=pool)
        factories.EngineSessionFactory(pool=pool, lease_expires_at=past)
        factories.EngineSessionFactory(pool=pool, ended_at=past, end_reason="released")
        factories.OfflineLicenseFactory.create_batch(2 + extra, pool=pool)
        factories.OfflineLicenseFactory(pool=pool, expires_at=past)
        factories.QueueTicketFactory.create_batch(3 + extra, pool=pool)
        factories.QueueTicketFactory(pool=pool, poll_before=past)
        factories.QueueTicketFactory(pool=pool, expires_at=past)
        factories.QueueTicketFactory(pool=pool, ended_at=past, outcome="granted", poll_before=future)
    for pool, expected in ((re_pool, (2, 2, 3)), (elsewhere, (3, 3, 4))):
        counts = queue_rules.count_pool(pool)
        assert (counts.live, counts.offline, counts.waiting) == expected
        assert expected == (
            pool.sessions.live().count(),
            pool.offline_licenses.unexpired().count(),
            pool.queue_tickets.waiting().count(),
        )
        assert abs(counts.now - timezone.now()) < timedelta(seconds=5)
        assert counts.now.tzinfo is not None


def test_activation_with_nobody_waiting_costs_what_it_did(engine, re_pool, django_assert_num_queries):
    """The waiting tickets are counted in the statement that counts live sessions and offline
    licenses: an activation without queue pays no query and no write for the line, and one query less
    than before the queue (13 for a new machine, 12 for a known one)."""
    re_pool.quota = 50
    re_pool.machine_quota = 50
    re_pool.save()
    engine.activate(machine_id="known")
    # On PostgreSQL the hot path (test_hot_path.py) grants both in one round trip after the key's lookup.
    postgresql = connection.vendor == "postgresql"
    with django_assert_num_queries(2 if postgresql else 12):
        assert engine.activate(machine_id="new").status_code == 201
    with django_assert_num_queries(2 if postgresql else 11):
        assert engine.activate(machine_id="known").status_code == 201
    assert not QueueTicket.objects.exists()


def test_activation_with_engines_waiting_costs_the_same(client, engine, full_pool, django_assert_num_queries):
    """Refused or granted, a request without queue costs what it did before the queue while tickets
    wait; a poll that is granted adds the ticket's lookup, its end and the count of its wait."""
    pool = full_pool
    ticket = join(engine, "agent-0")["ticket"]
    for n in range(1, 5):
        join(engine, f"agent-{n}")
    assert engine.activate(machine_id="newcomer").status_code == 409  # the hour's first refusal alerts
    # Refused: as many queries as a refusal cost before the queue (its two counts are one statement
    # now, and the hour's refusal counter is one more); on PostgreSQL one more, the hot path's attempt
    # (test_hot_path.py), which grants the next one in one round trip after the key's lookup.
    postgresql = connection.vendor == "postgresql"
    with django_assert_num_queries(15 if postgresql else 14):
        assert engine.activate(machine_id="newcomer").status_code == 409
    release(pool.held, 3)
    pool.quota = 9
    pool.save()
    with django_assert_num_queries(2 if postgresql else 12):
        assert engine.activate(machine_id="newcomer").status_code == 201
    with django_assert_num_queries(13):
        assert poll(engine, ticket, "agent-4").status_code == 404
    with django_assert_num_queries(15):
        assert poll(engine, ticket, "agent-0").status_code == 201
