"""The client's side of the queue (contract: "Waiting for a license"), step by step.

The portal does not queue yet, so these tests play its 202 answers from a script, with a clock the
test drives: they pin what the client sends (the same request plus the ticket, a new
Idempotency-Key per poll, after retry_after_seconds and before poll_before) and how it reads each
answer. Once the portal queues, test_wait.py runs the same waits end to end; the cases here (a poll
that came too late, a ticket removed from the line) stay hard to arrange there."""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message

import pytest
from katalon_license.errors import EX_UNAVAILABLE, PortalRefusal
from katalon_license.licensing import ActivationRequest, Licensing, WaitOver
from katalon_license.portal import Response

START = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
REQUEST = ActivationRequest(product="RE", machine_id="ci-agent-1", org_id="4720078043")


def iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ScriptedPortal:
    """Answers POST engine/activate from `answers` in order; each answer is a callable taking the
    portal (for its clock) and returning (status, body) or raising. Records what was sent, when."""

    answers: list
    now: float = 0.0
    sent: list = field(default_factory=list)

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def server_time(self):
        return START + timedelta(seconds=self.now)

    def call(self, method, path, body=None, *, idempotency_key=None, **options):
        assert (method, path) == ("POST", "engine/activate")
        self.sent.append({"body": body, "key": idempotency_key, "at": self.now})
        status, answer = self.answers.pop(0)(self)
        return Response(status, answer, Message(), received_at=self.now, server_time=self.server_time())


def queued(position, waiting, retry_after=5, ticket="q_abc123"):
    def answer(portal):
        moment = portal.server_time()
        return 202, {
            "queued": {
                "ticket": ticket,
                "position": position,
                "waiting": waiting,
                "retry_after_seconds": retry_after,
                "poll_before": iso(moment + timedelta(seconds=retry_after + 30)),
                "expires_at": iso(START + timedelta(minutes=30)),
            }
        }

    return answer


def granted(portal):
    moment = portal.server_time()
    return 201, {
        "session": {
            "id": "s_granted",
            "lease_expires_at": iso(moment + timedelta(minutes=5)),
            "heartbeat_interval_seconds": 60,
        },
        "organization": {"id": "4720078043", "name": "Acme QA"},
        "product": "RE",
        "machine": {"machine_id": "ci-agent-1", "registered_at": iso(moment)},
        "license": {"expires_at": "2027-11-27T23:59:59Z"},
        "usage": {"sessions": {"used": 10, "quota": 10}, "machines": {"used": 4, "quota": 10}},
    }


def refused(status, code, message="refused", **details):
    def answer(portal):
        raise PortalRefusal(status, code, message, details)

    return answer


def slow(seconds, answer):
    """An answer that comes `seconds` late (a poll retried through 503s, say)."""

    def delayed(portal):
        portal.now += seconds
        return answer(portal)

    return delayed


def licensing_for(portal, lines):
    return Licensing(
        portal, connect_timeout=120, sleep=portal.sleep, notify=lines.append, clock=portal.clock, rng=lambda: 0.5
    )


def test_a_queued_activation_polls_its_ticket_until_granted():
    """The first request asks to queue for the whole wait; each poll is that request plus the
    ticket, under a new Idempotency-Key, sent after retry_after_seconds and before poll_before; the
    position is reported as it moves; the 201 that ends the wait is the license."""
    portal = ScriptedPortal([queued(3, 5), queued(3, 5), queued(2, 4, retry_after=10), queued(1, 4), granted])
    lines = []
    license = licensing_for(portal, lines).activate(REQUEST, wait=1800)

    assert license.session_id == "s_granted"
    join, *polls = portal.sent
    assert join["body"] == {
        "product": "RE",
        "machine_id": "ci-agent-1",
        "org_id": "4720078043",
        "queue": True,
        "max_wait_seconds": 1800,
    }
    assert [poll["body"] for poll in polls] == [{**join["body"], "ticket": "q_abc123"}] * 4
    assert len({request["key"] for request in portal.sent}) == 5
    gaps = [later["at"] - earlier["at"] for earlier, later in zip(portal.sent, portal.sent[1:], strict=False)]
    retry_afters = [5, 5, 10, 5]
    assert all(after <= gap < after + 30 for gap, after in zip(gaps, retry_afters, strict=True))
    assert [line.split(" in line")[0] for line in lines] == [
        "waiting for a license: position 3 of 5",
        "waiting for a license: position 2 (was 3) of 4",
        "waiting for a license: position 1 (was 2) of 4",
    ]


def test_a_wait_that_runs_out_on_the_portal_is_69():
    """The portal ends the wait with 409 session_quota_exceeded (details.waited_seconds): 69."""
    portal = ScriptedPortal([queued(1, 1), refused(409, "session_quota_exceeded", "Waited 60 s.", waited_seconds=60)])
    with pytest.raises(WaitOver) as ended:
        licensing_for(portal, []).activate(REQUEST, wait=60)
    assert ended.value.exit_code == EX_UNAVAILABLE
    assert "Waited 60 s." in ended.value.message


def test_a_ticket_removed_from_the_line_ends_the_wait():
    """A ticket that was polled on time but is unknown was removed (by an admin): 69, said so."""
    portal = ScriptedPortal([queued(2, 2), refused(404, "ticket_not_found", "No such ticket.")])
    with pytest.raises(PortalRefusal) as ended:
        licensing_for(portal, []).activate(REQUEST, wait=600)
    assert ended.value.exit_code == EX_UNAVAILABLE
    assert "removed from the line" in ended.value.message


def test_a_ticket_that_lapsed_because_the_poll_came_late_joins_the_line_again():
    """When a poll reached the portal only after poll_before (it was retried through an outage),
    its ticket lapsed through no one's choice: the client joins again, for what is left of its wait."""
    portal = ScriptedPortal(
        [queued(2, 2), slow(40, refused(404, "ticket_not_found")), queued(3, 3, ticket="q_again"), granted]
    )
    lines = []
    license = licensing_for(portal, lines).activate(REQUEST, wait=600)

    assert license.session_id == "s_granted"
    rejoin = portal.sent[2]
    assert "ticket" not in rejoin["body"]
    assert rejoin["body"]["max_wait_seconds"] == 600 - int(rejoin["at"])
    assert portal.sent[3]["body"]["ticket"] == "q_again"
    assert any("joining it again" in line for line in lines)


def test_a_portal_that_keeps_no_queue_is_asked_again_until_the_wait_is_over():
    """A portal without the queue answers the queue request with 409: the client asks again, each
    time with a new key (a stored refusal would be replayed to the old one), and gives up with 69."""
    portal = ScriptedPortal([refused(409, "session_quota_exceeded", "Quota exceeded: 10 of 10.")] * 10)
    with pytest.raises(WaitOver):
        licensing_for(portal, []).activate(REQUEST, wait=30)
    attempts = len(portal.sent)
    assert 3 <= attempts <= 6
    assert len({request["key"] for request in portal.sent}) == attempts
    assert portal.sent[-1]["at"] == 30
