"""KSE follows its own rule (issue 13, item 5): one session per licensed user, and the quota counts
licensed users plus unexpired offline licenses, never sessions."""

import pytest

from sessions_app.models import EndReason, EngineSession, Machine
from tests import factories

from .conftest import Engine

pytestmark = pytest.mark.django_db


@pytest.fixture
def licensed(client, organization):
    """Engines for two licensed users of a KSE pool of quota 2: licensed("a"), licensed("b")."""
    pool = factories.LicensePoolFactory(organization=organization, product="KSE", quota=2, machine_quota=5)
    engines = {}
    for name in ("a", "b"):
        person = factories.MembershipFactory(organization=organization).user
        factories.LicensedUserFactory(pool=pool, user=person)
        engines[name] = Engine(client, factories.ApiKeyFactory(user=person).raw_key)
    return engines


def session_of(response):
    assert response.status_code == 201, response.json()
    return EngineSession.objects.get(public_id=response.json()["session"]["id"])


def test_a_licensed_user_within_quota_is_never_refused(licensed):
    """Quota 2, A and B licensed: A activates on m1 twice, then B on m2; all three are granted, and
    A holds one session (the restart replaced the first, reason released)."""
    first = session_of(licensed["a"].activate(product="KSE", machine_id="m1"))
    second = session_of(licensed["a"].activate(product="KSE", machine_id="m1"))
    session_of(licensed["b"].activate(product="KSE", machine_id="m2"))
    first.refresh_from_db()
    assert first.end_reason == EndReason.RELEASED
    assert EngineSession.objects.live().filter(user=first.user).get() == second
    assert EngineSession.objects.live().count() == 2


def test_a_crashed_studio_activates_again_on_its_machine_at_once(licensed, organization):
    """Quota 1: the engine died without releasing and activates again without release_previous; it
    is granted at once, not after the lease lapses, and the old session's heartbeat is told why."""
    pool = organization.pools.get(product="KSE")
    pool.licensed_users.order_by("pk").last().delete()  # B's: A alone is licensed, within quota 1.
    pool.quota = 1
    pool.save()
    crashed = session_of(licensed["a"].activate(product="KSE", machine_id="m1"))
    session_of(licensed["a"].activate(product="KSE", machine_id="m1"))
    response = licensed["a"].post(f"engine/sessions/{crashed.public_id}/heartbeat")
    assert response.status_code == 410
    assert response.json()["error"]["details"] == {"reason": "released"}


def test_a_restarted_studio_on_an_ephemeral_machine_keeps_it_registered(licensed, organization):
    """Found by the stateful test: the earlier session was the last on an ephemeral machine, so ending
    it deregistered the machine, and the new session ran on the deregistered machine, counted by no
    machine quota (with machine quota 1, a second person then took a second machine)."""
    pool = organization.pools.get(product="KSE")
    pool.machine_quota = 1
    pool.save()
    session_of(licensed["a"].activate(product="KSE", machine_id="ci-1", ephemeral=True))
    restarted = session_of(licensed["a"].activate(product="KSE", machine_id="ci-1", ephemeral=True))
    assert restarted.machine.is_registered
    assert Machine.objects.registered().get().machine_id == "ci-1"
    refused = licensed["b"].activate(product="KSE", machine_id="ci-2")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "machine_quota_exceeded"


def test_activating_on_another_machine_signs_the_first_out(licensed):
    """The earlier session on another machine ends with signed_in_elsewhere."""
    laptop = session_of(licensed["a"].activate(product="KSE", machine_id="laptop"))
    session_of(licensed["a"].activate(product="KSE", machine_id="desktop"))
    laptop.refresh_from_db()
    assert laptop.end_reason == EndReason.SIGNED_IN_ELSEWHERE


def test_the_quota_counts_licensed_users_and_offline_licenses_not_sessions(licensed, organization):
    """The answer's figures are the pool's licenses in use: licensed users plus unexpired offline
    licenses, however many sessions run."""
    pool = organization.pools.get(product="KSE")
    pool.quota = 3
    pool.save()
    factories.OfflineLicenseFactory(pool=pool)
    body = licensed["a"].activate(product="KSE", machine_id="m1").json()
    assert body["usage"]["sessions"] == {"used": 3, "quota": 3}
    body = licensed["b"].activate(product="KSE", machine_id="m2").json()
    assert body["usage"]["sessions"] == {"used": 3, "quota": 3}


def test_release_previous_and_the_one_session_rule_together(licensed):
    """release_previous on the same machine ends the earlier session as released, as the rule would."""
    first = session_of(licensed["a"].activate(product="KSE", machine_id="m1"))
    session_of(licensed["a"].activate(product="KSE", machine_id="m1", release_previous=True))
    first.refresh_from_db()
    assert first.end_reason == EndReason.RELEASED
    assert EngineSession.objects.live().count() == 1


def test_replacing_a_kse_session_costs_a_fixed_number_of_queries(licensed, django_assert_max_num_queries):
    """Ending the earlier session (on this machine or another) and starting the new one is a fixed
    set of statements, however many sessions the pool has seen."""
    for n in range(10):
        licensed["a"].activate(product="KSE", machine_id=f"m{n % 3}")
    with django_assert_max_num_queries(19):
        on_this_machine = licensed["a"].activate(product="KSE", machine_id="m0")
    with django_assert_max_num_queries(20):
        on_another = licensed["a"].activate(product="KSE", machine_id="m2")
    assert on_this_machine.status_code == on_another.status_code == 201
