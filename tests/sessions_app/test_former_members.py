"""Issue 13, item 2: a person who is no longer a member keeps no session, whatever ended their
membership (a membership deleted or marked removed in the admin used to leave sessions running)."""

import pytest
from django.utils import timezone

from organizations.models import Membership
from sessions_app.models import EndReason, EngineSession

pytestmark = pytest.mark.django_db


@pytest.fixture
def session_id(engine, re_pool):
    return engine.activate(machine_id="agent-1").json()["session"]["id"]


@pytest.fixture
def no_longer_a_member(member_user, organization):
    """Ended behind remove_member's back: nothing of theirs was ended with it."""
    Membership.objects.filter(user=member_user, organization=organization).update(removed_at=timezone.now())


def assert_member_removed(response):
    assert response.status_code == 410
    error = response.json()["error"]
    assert (error["code"], error["details"]["reason"]) == ("session_terminated", "member_removed")


def test_a_heartbeat_of_someone_no_longer_a_member_ends_the_session(engine, session_id, no_longer_a_member):
    """410 member_removed, and the license is free at once."""
    assert_member_removed(engine.post(f"engine/sessions/{session_id}/heartbeat"))
    session = EngineSession.objects.get(public_id=session_id)
    assert session.end_reason == EndReason.MEMBER_REMOVED
    assert not EngineSession.objects.live().exists()
    assert_member_removed(engine.post(f"engine/sessions/{session_id}/heartbeat"))


def test_a_release_by_someone_no_longer_a_member_is_refused_and_ends_the_session(
    engine, session_id, no_longer_a_member
):
    """The session still ends (its license is free), and the engine is told it is no longer a member."""
    assert_member_removed(engine.post(f"engine/sessions/{session_id}/release"))
    assert EngineSession.objects.get(public_id=session_id).end_reason == EndReason.MEMBER_REMOVED
    assert_member_removed(engine.post(f"engine/sessions/{session_id}/release"))


def test_a_membership_deleted_outright_ends_the_session_too(engine, session_id, member_user, organization):
    """A deleted row, not only a removed one."""
    Membership.objects.filter(user=member_user, organization=organization).delete()
    assert_member_removed(engine.post(f"engine/sessions/{session_id}/heartbeat"))


def test_a_member_in_good_standing_keeps_heartbeating(engine, session_id):
    """The membership check changes nothing for members."""
    assert engine.post(f"engine/sessions/{session_id}/heartbeat").status_code == 200
    assert engine.post(f"engine/sessions/{session_id}/release").status_code == 200
