"""Each change records its event once, in its own transaction; the engine API's successful calls
record nothing and do no notification work at all."""

from datetime import timedelta

import pytest
import time_machine
from django.db import transaction
from django.utils import timezone

from licenses import actions as license_actions
from licenses.errors import SeatQuotaExceeded
from notifications.event_types import EventType
from notifications.messages import describe
from notifications.models import Event
from organizations import actions as org_actions
from organizations import audit
from sessions_app import actions as session_actions
from tests import factories
from tests.sessions_app.conftest import Engine

pytestmark = pytest.mark.django_db


def events(event_type=None):
    queryset = Event.objects.order_by("pk")
    return list(queryset.filter(type=event_type) if event_type else queryset)


def test_grant_and_revoke_record_one_event_per_seat(organization, owner, kse_pool):
    people = [factories.MembershipFactory(organization=organization).user for _ in range(2)]
    license_actions.grant_licenses(pool=kse_pool, users=people, actor=owner)
    granted = events(EventType.SEAT_GRANTED)
    assert sorted(event.data["user"]["email"] for event in granted) == sorted(p.email for p in people)
    assert all(event.organization == organization and event.data["actor"] == owner.email for event in granted)

    license_actions.revoke_licenses(pool=kse_pool, users=people[:1], actor=owner)
    (revoked,) = events(EventType.SEAT_REVOKED)
    assert revoked.data == {
        "product": "KSE",
        "user": {"email": people[0].email, "name": people[0].name},
        "actor": owner.email,
    }


def test_a_change_that_rolls_back_leaves_no_event(organization, owner, member_user, kse_pool):
    with pytest.raises(RuntimeError), transaction.atomic():
        license_actions.grant_licenses(pool=kse_pool, users=[member_user], actor=owner)
        raise RuntimeError("the request failed after the grant")
    assert events() == []


def test_withdrawing_a_session_and_deactivating_a_machine(organization, owner, re_pool, member_user):
    session = factories.EngineSessionFactory(pool=re_pool, user=member_user)
    license_actions.withdraw_session(organization=organization, session=session, actor=owner)
    (withdrawn,) = events(EventType.SESSION_WITHDRAWN)
    assert withdrawn.data["session"]["id"] == session.public_id
    assert withdrawn.data["session"]["machine_id"] == session.machine.machine_id
    assert withdrawn.data["session"]["user"]["email"] == member_user.email

    license_actions.deactivate_machine(machine=session.machine, actor=owner)
    (deactivated,) = events(EventType.MACHINE_DEACTIVATED)
    assert deactivated.data["machine"]["machine_id"] == session.machine.machine_id
    assert deactivated.data["machine"]["product"] == "RE"


def test_a_person_ending_their_own_session_is_not_a_withdrawal(re_pool, member_user):
    session = factories.EngineSessionFactory(pool=re_pool, user=member_user)
    session_actions.release_session(user=member_user, session_id=session.public_id, by_person=True)
    assert events() == []


def test_joining_and_removal(organization, owner):
    invitation = factories.InvitationFactory(organization=organization, email="new@example.com")
    membership, _ = org_actions.accept_invitation(token=invitation.token, name="New", password="a-long-password-1")
    (joined,) = events(EventType.MEMBER_JOINED)
    assert joined.data["user"] == {"email": "new@example.com", "name": "New"}
    assert joined.data["role"] == "member"

    org_actions.remove_member(organization=organization, actor=owner, membership_id=membership.pk)
    (removed,) = events(EventType.MEMBER_REMOVED)
    assert removed.data["user"]["email"] == "new@example.com"
    assert removed.data["actor"] == owner.email
    assert {"sessions_ended", "kse_seats_revoked", "machines_deactivated", "api_keys_revoked"} <= removed.data.keys()


def test_api_keys_are_announced_in_each_organization_they_work_in(organization, member_user, other_organization):
    factories.MembershipFactory(organization=other_organization, user=member_user)
    restricted, _ = session_actions.create_api_key(
        user=member_user, name="CI", organization=organization, actor=member_user, ip_address=None
    )
    (created,) = events(EventType.API_KEY_CREATED)
    assert created.organization == organization
    assert created.data["api_key"]["prefix"] == restricted.prefix
    assert "key_hash" not in str(created.data)

    session_actions.create_api_key(user=member_user, name="laptop", actor=member_user, ip_address=None)
    assert {e.organization for e in events(EventType.API_KEY_CREATED)[1:]} == {organization, other_organization}

    session_actions.revoke_api_key(api_key=restricted, actor=member_user, ip_address=None)
    session_actions.revoke_api_key(api_key=restricted, actor=member_user, ip_address=None)  # already revoked
    assert len(events(EventType.API_KEY_REVOKED)) == 1


def test_an_activation_refused_for_quota_is_quota_reached_once_an_hour(client, organization, member_user, re_pool):
    """quota 2: the third and later activations are refused; one quota.reached per pool per hour."""
    engine = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    with time_machine.travel(timezone.now().replace(minute=10), tick=False) as traveller:
        assert [engine.activate(machine_id=f"agent-{n}").status_code for n in range(5)] == [201, 201, 409, 409, 409]
        (reached,) = events(EventType.QUOTA_REACHED)
        assert reached.data["limit"] == "sessions"
        assert reached.data["pool"]["quota"] == 2
        assert reached.data["figures"] == {"quota": 2, "live_sessions": 2, "offline_licenses": 0, "waiting": 0}
        assert reached.data["refused"] == {"user": member_user.email, "machine_id": "agent-2"}
        assert "2 of 2" in reached.data["message"]
        assert reached.data["queued"] is False

        traveller.shift(timedelta(minutes=45))  # 10:55, the same hour
        assert engine.activate(machine_id="agent-9").status_code == 409
        assert len(events(EventType.QUOTA_REACHED)) == 1
        traveller.shift(timedelta(minutes=10))  # the next hour
        assert engine.activate(machine_id="agent-9").status_code == 409
    assert len(events(EventType.QUOTA_REACHED)) == 2


def test_an_engine_put_in_line_is_quota_reached_too(client, organization, member_user, re_pool):
    """With the queue, a full pool makes engines wait instead of failing: joining the line says the
    quota was reached just as a refusal would (once an hour), marked queued; polls say nothing more."""
    engine = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    factories.EngineSessionFactory.create_batch(2, pool=re_pool)
    response = engine.activate(machine_id="agent-7", queue=True)
    assert response.status_code == 202
    (reached,) = events(EventType.QUOTA_REACHED)
    assert reached.data["queued"] is True
    assert reached.data["limit"] == "sessions"
    assert reached.data["refused"] == {"user": member_user.email, "machine_id": "agent-7"}
    assert reached.data["message"].startswith("No license free: 2 of 2")
    mail = describe(reached)
    assert mail.summary.endswith("are used up; an engine waits in line")
    assert ("Waiting machine", "agent-7") in mail.figures
    ticket = response.json()["queued"]["ticket"]
    assert engine.activate(machine_id="agent-7", queue=True, ticket=ticket).status_code == 202
    assert engine.activate(machine_id="agent-8", queue=True).status_code == 202
    assert len(events(EventType.QUOTA_REACHED)) == 1


def test_the_machine_quota_is_a_quota_too(client, organization, member_user):
    factories.LicensePoolFactory(organization=organization, product="RE", quota=5, machine_quota=1)
    engine = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    assert engine.activate(machine_id="one").status_code == 201
    assert engine.activate(machine_id="two").status_code == 409
    (reached,) = events(EventType.QUOTA_REACHED)
    assert reached.data["limit"] == "machines"


def test_other_refusals_are_not_quota_reached(client, organization, member_user, kse_pool):
    engine = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    assert engine.activate(product="KSE").json()["error"]["code"] == "not_licensed"
    assert events() == []


def test_a_grant_refused_for_quota_is_quota_reached_and_audited(organization, owner, kse_pool):
    people = [factories.MembershipFactory(organization=organization).user for _ in range(4)]
    with pytest.raises(SeatQuotaExceeded):
        license_actions.grant_licenses(pool=kse_pool, users=people, actor=owner)
    (reached,) = events(EventType.QUOTA_REACHED)
    assert reached.data["limit"] == "licensed_users"
    assert reached.data["figures"] == {"quota": 3, "used": 0, "requested": 4}
    assert reached.data["refused"] == {"user": owner.email}
    assert organization.audit_events.filter(action=audit.Action.LICENSE_GRANT_REFUSED).count() == 1


def test_successful_engine_calls_do_no_notification_work(client, organization, member_user, re_pool):
    """Activation, heartbeat and release of a granted license send no audit signal, so no event is
    looked for or written: the hot path is exactly what it was."""
    engine = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    signals = []

    def count(sender, events, **kwargs):
        signals.append(events)

    audit.recorded.connect(count)
    try:
        session_id = engine.activate().json()["session"]["id"]
        assert engine.post(f"engine/sessions/{session_id}/heartbeat").status_code == 200
        assert engine.post(f"engine/sessions/{session_id}/release").status_code == 200
    finally:
        audit.recorded.disconnect(count)
    assert signals == []
    assert events() == []
