"""The activation rules and the session lifecycle: heartbeat, release, expiry."""

from datetime import timedelta

import pytest
from django.utils import timezone

from sessions_app.actions import claim_idempotency_key, request_fingerprint
from sessions_app.models import EngineSession, IdempotencyRecord, Machine
from tests import factories

from .conftest import Engine


def test_any_member_may_activate_runtime_engine(client, re_pool, owner, admin_user, member_user):
    """RE licenses are for every member, whatever their role."""
    for n, person in enumerate((owner, admin_user, member_user)):
        engine = Engine(client, factories.ApiKeyFactory(user=person).raw_key)
        assert engine.activate(machine_id=f"agent-{n}").status_code == 201


def test_an_activation_answers_the_contracts_fields(engine, re_pool, organization):
    """The 201 body carries the session, organization, machine, license end and the pool's figures."""
    body = engine.activate(machine_id="agent-7", hostname="agent-7.ci", engine_version="10.2.1").json()
    session = EngineSession.objects.get()
    assert body["session"] == {
        "id": session.public_id,
        "lease_expires_at": session.lease_expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "heartbeat_interval_seconds": 60,
    }
    assert body["organization"] == {"id": organization.public_id, "name": "Acme QA"}
    assert body["product"] == "RE"
    assert body["machine"]["machine_id"] == "agent-7"
    assert body["machine"]["registered_at"].endswith("Z")
    assert body["license"] == {"expires_at": re_pool.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert body["usage"] == {"sessions": {"used": 1, "quota": 3}, "machines": {"used": 1, "quota": 3}}
    assert session.hostname == "agent-7.ci"
    assert session.engine_version == "10.2.1"
    assert session.lease_expires_at - session.started_at == timedelta(seconds=re_pool.lease_seconds)


def test_each_process_is_one_session(engine, re_pool):
    """Two processes on one machine take two licenses and one machine slot."""
    engine.activate(machine_id="agent-1")
    body = engine.activate(machine_id="agent-1").json()
    assert body["usage"] == {"sessions": {"used": 2, "quota": 3}, "machines": {"used": 1, "quota": 3}}
    assert Machine.objects.registered().count() == 1


def test_one_organization_is_chosen_without_org_id(engine, re_pool, member_user, other_organization):
    """A person whose only RE pool is in one organization need not name it, even if they are in others."""
    factories.MembershipFactory(organization=other_organization, user=member_user)
    factories.LicensePoolFactory(organization=other_organization, product="KSE")
    assert engine.activate().json()["organization"]["id"] == re_pool.organization.public_id


def test_a_licensed_user_activates_kse_on_one_machine_at_a_time(engine, kse_pool, member_user):
    """Activating KSE on a second machine ends the first machine's session with signed_in_elsewhere."""
    factories.LicensedUserFactory(pool=kse_pool, user=member_user)
    first = engine.activate(product="KSE", machine_id="laptop").json()["session"]["id"]
    second = engine.activate(product="KSE", machine_id="desktop")
    assert second.status_code == 201
    assert EngineSession.objects.get(public_id=first).end_reason == "signed_in_elsewhere"
    response = engine.post(f"engine/sessions/{first}/heartbeat")
    assert response.status_code == 410
    assert response.json()["error"]["details"] == {"reason": "signed_in_elsewhere"}
    assert EngineSession.objects.live().count() == 1


def test_kse_sessions_of_other_people_are_untouched(engine, kse_pool, member_user):
    """Signing in elsewhere only ends the same person's session."""
    factories.LicensedUserFactory(pool=kse_pool, user=member_user)
    colleague = factories.LicensedUserFactory(pool=kse_pool).user
    theirs = factories.EngineSessionFactory(pool=kse_pool, user=colleague)
    engine.activate(product="KSE", machine_id="laptop")
    theirs.refresh_from_db()
    assert theirs.is_live


def test_release_previous_ends_my_sessions_on_this_machine(engine, api_key, re_pool):
    """release_previous first ends this person's live sessions of the product on the machine (reason released),
    and leaves other machines and other people alone."""
    mine = [engine.activate(machine_id="agent-1").json()["session"]["id"] for _ in range(2)]
    other_machine = engine.activate(machine_id="agent-2").json()["session"]["id"]
    assert engine.activate(machine_id="agent-1").status_code == 409
    response = engine.activate(machine_id="agent-1", release_previous=True)
    assert response.status_code == 201
    assert set(EngineSession.objects.filter(public_id__in=mine).values_list("end_reason", flat=True)) == {"released"}
    assert EngineSession.objects.get(public_id=other_machine).is_live
    assert response.json()["usage"]["sessions"] == {"used": 2, "quota": 3}


def test_a_key_restricted_to_one_organization_releases_only_there(
    client, engine, member_user, organization, re_pool, other_organization
):
    """release_previous with a key restricted to one organization leaves the person's sessions in
    their other organizations alone, as heartbeat and release do."""
    factories.MembershipFactory(organization=other_organization, user=member_user)
    factories.LicensePoolFactory(organization=other_organization, product="RE")
    elsewhere = engine.activate(org_id=other_organization.public_id).json()["session"]["id"]
    restricted = Engine(client, factories.ApiKeyFactory(user=member_user, organization=organization).raw_key)
    assert restricted.activate(release_previous=True).status_code == 201
    assert EngineSession.objects.get(public_id=elsewhere).is_live


def test_an_ephemeral_machine_leaves_with_its_last_session(engine, re_pool):
    """An ephemeral machine is deregistered when its last session ends, so it never holds a machine slot."""
    re_pool.machine_quota = 1
    re_pool.save()
    for n in range(3):
        response = engine.activate(machine_id=f"container-{n}", ephemeral=True)
        assert response.status_code == 201, response.json()
        engine.post(f"engine/sessions/{response.json()['session']['id']}/release")
    assert Machine.objects.registered().count() == 0
    assert Machine.objects.filter(deactivation_reason="ephemeral").count() == 3


def test_a_crashed_ephemeral_machine_gives_its_slot_to_the_next_at_once(engine, re_pool):
    """A container killed without releasing holds no machine slot once its lease lapses, before any
    cleanup runs: CI that starts a new container every run never fills the machine quota."""
    re_pool.machine_quota = 1
    re_pool.save()
    crashed = engine.activate(machine_id="container-1", ephemeral=True).json()["session"]["id"]
    EngineSession.objects.filter(public_id=crashed).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    response = engine.activate(machine_id="container-2", ephemeral=True)
    assert response.status_code == 201, response.json()
    assert response.json()["usage"]["machines"] == {"used": 1, "quota": 1}
    assert list(Machine.objects.registered().values_list("machine_id", flat=True)) == ["container-2"]
    assert EngineSession.objects.get(public_id=crashed).end_reason == "expired"


def test_a_persistent_machine_stays_registered(engine, re_pool):
    """Without ephemeral the machine keeps its registration after the session ends."""
    session_id = engine.activate(machine_id="agent-1").json()["session"]["id"]
    engine.post(f"engine/sessions/{session_id}/release")
    assert Machine.objects.registered().get().machine_id == "agent-1"


def test_machines_past_the_idle_limit_make_room(engine, re_pool):
    """A new machine may take the slot of one idle longer than the pool's idle limit."""
    re_pool.machine_quota = 1
    re_pool.machine_idle_days = 7
    re_pool.save()
    stale = factories.MachineFactory(pool=re_pool, last_seen_at=timezone.now() - timedelta(days=8))
    assert engine.activate(machine_id="agent-new").status_code == 201
    stale.refresh_from_db()
    assert not stale.is_registered
    assert stale.deactivation_reason == "idle"


def test_a_recently_seen_machine_keeps_its_slot(engine, re_pool):
    """Machines within the idle limit are not deregistered to make room."""
    re_pool.machine_quota = 1
    re_pool.machine_idle_days = 7
    re_pool.save()
    factories.MachineFactory(pool=re_pool, last_seen_at=timezone.now() - timedelta(days=6))
    assert engine.activate(machine_id="agent-new").json()["error"]["code"] == "machine_quota_exceeded"


def test_a_lapsed_lease_frees_its_license_at_once(engine, api_key, re_pool):
    """A lease that ran out stops counting the moment it lapses, before any cleanup runs."""
    for n in range(3):
        factories.EngineSessionFactory(
            pool=re_pool,
            user=api_key.user,
            machine=factories.MachineFactory(pool=re_pool, machine_id=f"agent-{n}"),
            lease_expires_at=timezone.now() - timedelta(seconds=1),
        )
    assert engine.activate(machine_id="agent-0").status_code == 201


def test_a_heartbeat_extends_the_lease_by_the_pools_lease(engine, api_key, re_pool):
    """A heartbeat moves the lease to a full lease length from the database's now."""
    session = factories.EngineSessionFactory(
        pool=re_pool, user=api_key.user, lease_expires_at=timezone.now() + timedelta(seconds=5)
    )
    response = engine.post(f"engine/sessions/{session.public_id}/heartbeat")
    assert response.status_code == 200
    before = session.lease_expires_at
    session.refresh_from_db()
    assert session.lease_expires_at > before + timedelta(seconds=200)
    assert session.lease_expires_at - session.last_heartbeat_at == timedelta(seconds=re_pool.lease_seconds)
    assert response.json() == {
        "session": {
            "id": session.public_id,
            "lease_expires_at": session.lease_expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "heartbeat_interval_seconds": 60,
        }
    }


def test_release_frees_the_license_and_is_idempotent(engine, re_pool):
    """Release ends the session with reason released; releasing it again answers the same 200."""
    re_pool.quota = 1
    re_pool.save()
    session_id = engine.activate(machine_id="agent-1").json()["session"]["id"]
    first = engine.post(f"engine/sessions/{session_id}/release")
    assert first.status_code == 200
    assert first.json()["session"]["end_reason"] == "released"
    assert first.json()["session"]["id"] == session_id
    again = engine.post(f"engine/sessions/{session_id}/release")
    assert again.status_code == 200
    assert again.json() == first.json()
    assert engine.activate(machine_id="agent-2").status_code == 201


def test_a_retry_with_the_same_idempotency_key_replays_the_first_answer(engine, re_pool):
    """The same Idempotency-Key and body return the first 201 again and take nothing more."""
    first = engine.activate(machine_id="agent-1", headers={"Idempotency-Key": "build-42"})
    again = engine.activate(machine_id="agent-1", headers={"Idempotency-Key": "build-42"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert EngineSession.objects.count() == 1


def test_a_refused_activation_is_replayed_and_a_new_key_is_decided_afresh(engine, re_pool):
    """The first response is replayed even when it was a refusal; a new Idempotency-Key gets a fresh decision."""
    re_pool.quota = 0
    re_pool.save()
    first = engine.activate(headers={"Idempotency-Key": "k"})
    assert first.status_code == 409
    re_pool.quota = 1
    re_pool.save()
    again = engine.activate(headers={"Idempotency-Key": "k"})
    assert (again.status_code, again.json()) == (409, first.json())
    assert EngineSession.objects.count() == 0
    assert engine.activate(headers={"Idempotency-Key": "k2"}).status_code == 201


def test_idempotency_keys_belong_to_one_person(client, engine, re_pool):
    """Another person's request with the same Idempotency-Key is their own."""
    colleague = factories.MembershipFactory(organization=re_pool.organization).user
    other = Engine(client, factories.ApiKeyFactory(user=colleague).raw_key)
    first = engine.activate(headers={"Idempotency-Key": "same"}).json()
    second = other.activate(headers={"Idempotency-Key": "same"}).json()
    assert first["session"]["id"] != second["session"]["id"]


def test_idempotency_keys_belong_to_one_api_key(client, member_user, organization, other_organization):
    """Issue 13, item 3: one person with a key restricted to A and one restricted to B sends the same
    body and Idempotency-Key with each. B's request is decided afresh and gets a session in B, one
    its key can heartbeat, instead of a replay of A's session."""
    factories.MembershipFactory(organization=other_organization, user=member_user)
    for org in (organization, other_organization):
        factories.LicensePoolFactory(organization=org, product="RE")
    key_a = Engine(client, factories.ApiKeyFactory(user=member_user, organization=organization).raw_key)
    key_b = Engine(client, factories.ApiKeyFactory(user=member_user, organization=other_organization).raw_key)

    first = key_a.activate(machine_id="ci-1", headers={"Idempotency-Key": "build-7"})
    second = key_b.activate(machine_id="ci-1", headers={"Idempotency-Key": "build-7"})

    assert first.status_code == second.status_code == 201
    assert first.json()["organization"]["id"] == organization.public_id
    assert second.json()["organization"]["id"] == other_organization.public_id
    assert EngineSession.objects.filter(pool__organization=other_organization).count() == 1
    session_b = second.json()["session"]["id"]
    assert key_b.post(f"engine/sessions/{session_b}/heartbeat").status_code == 200
    # Each key's own retry is still a replay.
    again = key_b.activate(machine_id="ci-1", headers={"Idempotency-Key": "build-7"})
    assert again.json() == second.json()
    assert EngineSession.objects.count() == 2


def test_a_key_is_marked_used_at_most_every_few_minutes(engine, api_key, re_pool):
    """last_used_at is written on use, and not rewritten by every request."""
    engine.get("engine/organizations")
    api_key.refresh_from_db()
    first_use = api_key.last_used_at
    assert first_use is not None
    engine.get("engine/organizations")
    api_key.refresh_from_db()
    assert api_key.last_used_at == first_use
    type(api_key).objects.filter(pk=api_key.pk).update(last_used_at=timezone.now() - timedelta(minutes=6))
    engine.get("engine/organizations")
    api_key.refresh_from_db()
    assert api_key.last_used_at > first_use - timedelta(seconds=1)


def test_revoking_a_key_takes_effect_on_the_next_request(engine, api_key, re_pool):
    """The request after revocation is refused."""
    assert engine.get("engine/organizations").status_code == 200
    api_key.revoked_at = timezone.now()
    api_key.save()
    assert engine.get("engine/organizations").status_code == 401


def test_the_hot_path_costs_a_fixed_number_of_queries(engine, re_pool, django_assert_max_num_queries):
    """Activation, heartbeat and release cost the same few queries however busy the pool is."""
    re_pool.quota = 50
    re_pool.machine_quota = 50
    re_pool.save()
    for n in range(20):
        engine.activate(machine_id=f"warm-{n}")
    with django_assert_max_num_queries(15):
        session_id = engine.activate(machine_id="agent-new").json()["session"]["id"]
    # Heartbeat: the rate-limit upsert, the key, the session, the conditional UPDATE, a savepoint pair.
    with django_assert_max_num_queries(6):
        assert engine.post(f"engine/sessions/{session_id}/heartbeat").status_code == 200
    with django_assert_max_num_queries(11):
        assert engine.post(f"engine/sessions/{session_id}/release").status_code == 200


def test_a_claim_left_by_a_dead_request_is_taken_over(engine, api_key, re_pool):
    """An Idempotency-Key claimed minutes ago by a request that never answered does not block retries forever."""
    body = {"product": "RE", "machine_id": "agent-1"}
    IdempotencyRecord.objects.create(
        api_key=api_key,
        key="orphan",
        request_fingerprint=request_fingerprint(body),
        created_at=timezone.now() - timedelta(minutes=3),
    )
    response = engine.post("engine/activate", body, **{"Idempotency-Key": "orphan"})
    assert response.status_code == 201
    assert engine.post("engine/activate", body, **{"Idempotency-Key": "orphan"}).json() == response.json()


@pytest.mark.django_db(transaction=True)
def test_an_idempotency_key_is_never_claimed_outside_the_deciding_transaction(api_key):
    """A claim committed on its own, apart from the decision and its answer, would refuse every
    retry as in use; claiming outside a transaction is refused and writes nothing."""
    with pytest.raises(RuntimeError, match="inside the transaction"):
        claim_idempotency_key(api_key=api_key, key="k-1", fingerprint=request_fingerprint({}))
    assert not IdempotencyRecord.objects.exists()
