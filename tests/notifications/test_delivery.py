"""Webhooks reach a real receiver on loopback, signed so that the Standard Webhooks library verifies
them; failures are retried on the schedule (time is moved, never slept); an endpoint failing for a
day is disabled and its owners told."""

from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.utils import timezone
from standardwebhooks import WebhookVerificationError

from licenses import actions as license_actions
from notifications import actions, destinations
from notifications.event_types import EventType
from notifications.models import Endpoint, Event, Mail, Status, WebhookDelivery
from notifications.sending import JITTER, RETRY_SCHEDULE
from tests import factories

pytestmark = pytest.mark.django_db


def grant(pool, user, actor, committed):
    with committed():
        license_actions.grant_licenses(pool=pool, users=[user], actor=actor)


def test_a_grant_reaches_the_receiver_signed_and_verifiable(
    organization, owner, member_user, kse_pool, receiver, endpoint_for, committed, work
):
    """One grant, one POST: the Standard Webhooks library verifies it with the endpoint's secret, and
    the body is {id, type, created_at, organization: {id (public), name}, data}."""
    endpoint, secret = endpoint_for(receiver.url)
    grant(kse_pool, member_user, owner, committed)
    assert receiver.requests == []  # nothing leaves before the worker runs
    work()

    (request,) = receiver.requests
    payload = request.verify(secret)
    event = Event.objects.get(type=EventType.SEAT_GRANTED)
    assert request.headers["webhook-id"] == event.public_id == payload["id"]
    assert request.headers["Content-Type"] == "application/json"
    assert payload["type"] == "seat.granted"
    assert payload["organization"] == {"id": organization.public_id, "name": "Acme QA"}
    assert payload["data"]["user"]["email"] == member_user.email
    assert payload["data"]["product"] == "KSE"
    assert payload["data"]["actor"] == owner.email
    assert payload["created_at"].endswith("Z")
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert (delivery.status, delivery.attempts, delivery.response_status) == (Status.SUCCEEDED, 1, 200)
    assert delivery.duration_ms is not None


def test_a_signature_made_with_another_secret_is_refused_by_the_receiver(
    owner, member_user, kse_pool, receiver, endpoint_for, committed, work
):
    """The check the receiver makes is a real one: the wrong secret fails it."""
    endpoint_for(receiver.url)
    grant(kse_pool, member_user, owner, committed)
    work()
    (request,) = receiver.requests
    with pytest.raises(WebhookVerificationError):
        request.verify("whsec_" + "A" * 43 + "=")


def test_an_endpoint_receives_only_the_events_it_chose(
    owner, member_user, kse_pool, receiver, endpoint_for, committed, work
):
    endpoint_for(receiver.url, event_types=[EventType.SEAT_REVOKED])
    grant(kse_pool, member_user, owner, committed)
    with committed():
        license_actions.revoke_licenses(pool=kse_pool, users=[member_user], actor=owner)
    work()
    assert [request.json["type"] for request in receiver.requests] == ["seat.revoked"]


def test_retries_follow_the_schedule_with_jitter_then_give_up(
    owner, member_user, kse_pool, receiver, endpoint_for, committed, work
):
    """A receiver answering 503 is tried 8 times: after about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and
    10 h, each wait within the jitter; every attempt carries the same webhook-id, its own timestamp and
    a valid signature. After the last the delivery has failed."""
    endpoint, secret = endpoint_for(receiver.url)
    receiver.answer(*[503] * 8)
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        grant(kse_pool, member_user, owner, committed)
        work()
        delivery = WebhookDelivery.objects.get(endpoint=endpoint)
        for number, wait in enumerate(RETRY_SCHEDULE, start=1):
            assert delivery.attempts == number
            assert delivery.status == Status.PENDING
            waited = delivery.next_attempt_at - delivery.last_attempt_at
            assert wait * (1 - JITTER) <= waited <= wait * (1 + JITTER)
            traveller.move_to(delivery.next_attempt_at - timedelta(seconds=1))
            work()
            assert len(receiver.requests) == number, "an attempt went out before its time"
            traveller.move_to(delivery.next_attempt_at)
            work()
            assert len(receiver.requests) == number + 1
            receiver.requests[-1].verify(secret)
            delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (Status.FAILED, 8, 503)
    assert delivery.next_attempt_at is None
    assert len({request.headers["webhook-id"] for request in receiver.requests}) == 1
    assert len({request.headers["webhook-timestamp"] for request in receiver.requests}) == 8


def test_a_client_error_is_not_retried_but_rate_limiting_is(
    owner, member_user, kse_pool, receiver, endpoint_for, committed, work
):
    endpoint, _ = endpoint_for(receiver.url)
    receiver.answer(400)
    grant(kse_pool, member_user, owner, committed)
    work()
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert (delivery.status, delivery.attempts, delivery.response_status) == (Status.FAILED, 1, 400)
    assert delivery.last_error.startswith("HTTP 400")

    receiver.answer(429)
    with committed():
        license_actions.revoke_licenses(pool=kse_pool, users=[member_user], actor=owner)
    work()
    revoked = WebhookDelivery.objects.get(endpoint=endpoint, event__type=EventType.SEAT_REVOKED)
    assert (revoked.status, revoked.attempts) == (Status.PENDING, 1)
    assert revoked.next_attempt_at > timezone.now()


def test_a_redirect_is_not_followed(owner, member_user, kse_pool, receiver, endpoint_for, committed, work):
    """A 3xx is a failed delivery: following it would let a receiver send the portal anywhere."""
    from tests.notifications.conftest import Receiver

    elsewhere = Receiver()
    try:
        receiver.locations[302] = elsewhere.url
        receiver.answer(302)
        endpoint, _ = endpoint_for(receiver.url)
        grant(kse_pool, member_user, owner, committed)
        work()
        delivery = WebhookDelivery.objects.get(endpoint=endpoint)
        assert (delivery.status, delivery.response_status) == (Status.FAILED, 302)
        assert elsewhere.requests == []
    finally:
        elsewhere.close()


def test_an_answer_dripped_slowly_ends_at_the_timeout(monkeypatch, receiver, owner, allow_private):
    """The timeout bounds the whole attempt, not each read: a receiver holding the request open is
    abandoned after TIMEOUT seconds (shortened here to keep the suite quick)."""
    receiver.answer(None)
    monkeypatch.setattr(destinations, "TIMEOUT", 0.5)
    started = timezone.now()
    with pytest.raises(destinations.UnreachableDestination, match="No answer"):
        destinations.post(receiver.url, body=b"{}", headers={}, timeout=destinations.TIMEOUT)
    assert timezone.now() - started < timedelta(seconds=3)


def test_secrets_roll_with_a_day_of_overlap(
    organization, owner, member_user, kse_pool, receiver, endpoint_for, committed, work
):
    """After a roll every delivery carries two signatures, one per secret, for 24 hours; then only
    the new secret's."""
    endpoint, old_secret = endpoint_for(receiver.url)
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        _, new_secret = actions.roll_secret(organization=organization, actor=owner, endpoint_id=endpoint.pk)
        assert new_secret != old_secret and new_secret.startswith("whsec_")
        grant(kse_pool, member_user, owner, committed)
        work()
        during = receiver.requests[-1]
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        during.verify(old_secret)
        during.verify(new_secret)

        traveller.shift(timedelta(hours=24, seconds=1))
        with committed():
            license_actions.revoke_licenses(pool=kse_pool, users=[member_user], actor=owner)
        work()
        after = receiver.requests[-1]
        assert len(after.headers["webhook-signature"].split(" ")) == 1
        after.verify(new_secret)
        with pytest.raises(WebhookVerificationError):
            after.verify(old_secret)


def test_secrets_are_stored_encrypted(owner, receiver, endpoint_for):
    endpoint, secret = endpoint_for(receiver.url)
    stored = Endpoint.objects.values_list("secret_encrypted", flat=True).get(pk=endpoint.pk)
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
    assert endpoint.signing_secrets() == [secret]


def test_an_endpoint_failing_for_a_day_is_disabled_and_its_owners_mailed(
    organization, owner, admin_user, member_user, kse_pool, receiver, endpoint_for, committed, work
):
    """Failures from the first attempt on; the first failed attempt 24 hours after the first failure
    disables the endpoint, drops what waits for it, and mails the owner and admins (not members)."""
    endpoint, _ = endpoint_for(receiver.url)
    receiver.answer(*[500] * 20)
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        grant(kse_pool, member_user, owner, committed)
        work()
        first_failure = Endpoint.objects.get(pk=endpoint.pk).failing_since
        assert first_failure is not None
        while True:
            delivery = WebhookDelivery.objects.get(endpoint=endpoint, event__type=EventType.SEAT_GRANTED)
            if delivery.next_attempt_at is None:
                break
            traveller.move_to(delivery.next_attempt_at)
            work()
            endpoint.refresh_from_db()
            if endpoint.disabled_at is None:
                assert timezone.now() - first_failure < timedelta(hours=24)
    endpoint.refresh_from_db()
    assert endpoint.disabled_at is not None
    assert endpoint.disabled_at - first_failure >= timedelta(hours=24)
    assert delivery.status == Status.FAILED
    disabled_mails = Mail.objects.filter(kind="endpoint_disabled")
    assert sorted(disabled_mails.values_list("recipient__email", flat=True)) == sorted([owner.email, admin_user.email])
    sent = [message for message in mail.outbox if "webhook endpoint was disabled" in message.subject]
    assert sorted(message.to[0] for message in sent) == sorted([owner.email, admin_user.email])
    assert receiver.url in sent[0].body and f"/notifications/endpoints/{endpoint.pk}/" in sent[0].body

    # A disabled endpoint gets nothing new.
    requests_before = len(receiver.requests)
    with committed():
        license_actions.revoke_licenses(pool=kse_pool, users=[member_user], actor=owner)
    work()
    assert len(receiver.requests) == requests_before


def test_a_success_clears_the_failure_count(owner, member_user, kse_pool, receiver, endpoint_for, committed, work):
    endpoint, _ = endpoint_for(receiver.url)
    receiver.answer(500)
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        grant(kse_pool, member_user, owner, committed)
        work()
        assert Endpoint.objects.get(pk=endpoint.pk).failing_since is not None
        traveller.shift(timedelta(seconds=6))
        work()
    assert Endpoint.objects.get(pk=endpoint.pk).failing_since is None
    assert WebhookDelivery.objects.get(endpoint=endpoint).status == Status.SUCCEEDED


def test_send_again_and_send_test_event(
    organization, owner, member_user, kse_pool, receiver, endpoint_for, committed, work
):
    endpoint, secret = endpoint_for(receiver.url)
    receiver.answer(400)
    grant(kse_pool, member_user, owner, committed)
    work()
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert delivery.status == Status.FAILED

    with committed():
        actions.send_again(organization=organization, actor=owner, delivery_id=delivery.pk)
    work()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (Status.SUCCEEDED, 2)
    assert receiver.requests[0].headers["webhook-id"] == receiver.requests[1].headers["webhook-id"]

    with committed():
        actions.send_test_event(organization=organization, actor=owner, endpoint_id=endpoint.pk)
    work()
    test = receiver.requests[-1].verify(secret)
    assert test["type"] == "webhook.test"
    assert test["data"]["actor"] == owner.email


def test_with_the_worker_stopped_the_portal_works_and_deliveries_wait(
    owner, member_user, kse_pool, receiver, endpoint_for, committed, work, client
):
    """Without a worker nothing is sent and nothing fails; started, it sends what waited."""
    endpoint_for(receiver.url)
    client.force_login(owner)
    members = [factories.MembershipFactory(organization=kse_pool.organization).user for _ in range(2)]
    with committed():
        response = client.post(
            f"/o/{kse_pool.organization.public_id}/licenses/KSE/grant/", {"users": [u.pk for u in members]}
        )
    assert response.status_code == 302
    assert WebhookDelivery.objects.count() == 0  # the events wait to be fanned out
    assert Event.objects.filter(type=EventType.SEAT_GRANTED, fanned_out_at__isnull=True).count() == 2
    assert receiver.requests == []
    work()
    assert len(receiver.requests) == 2
