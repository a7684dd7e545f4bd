"""Limits hold under real concurrency: many simultaneous requests, each on its own database
connection, against PostgreSQL (SQLite serialises writers, so it cannot show a race)."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from licenses.models import LicensePool
from sessions_app.actions import expire_sessions
from sessions_app.models import EngineSession, Machine
from tests import factories
from tests.concurrency import organization_row_is_free, pool_lock_unavailable, run_together

from .conftest import Engine

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def all_at_once(count, request):
    """request(n) for n in range(count), all at once from their own connections; the answers in order."""
    return run_together([lambda n=n: request(n) for n in range(count)])


def activate(raw_key, **fields):
    def request(n):
        response = Engine(Client(), raw_key).activate(**{"machine_id": f"agent-{n}", **fields})
        return response.status_code, response.json()

    return request


def test_a_quota_of_10_admits_exactly_10_of_100_simultaneous_activations(member_user, organization):
    """100 processes start at once against quota 10: exactly 10 sessions, 90 session_quota_exceeded."""
    pool = factories.LicensePoolFactory(organization=organization, quota=10, machine_quota=100)
    raw_key = factories.ApiKeyFactory(user=member_user).raw_key
    answers = all_at_once(100, activate(raw_key))
    statuses = [status for status, _ in answers]
    assert statuses.count(201) == 10
    assert [body["error"]["code"] for status, body in answers if status != 201] == ["session_quota_exceeded"] * 90
    assert EngineSession.objects.filter(pool=pool).live().count() == 10


def test_a_machine_quota_of_5_admits_exactly_5_of_60_new_machines(member_user, organization):
    """60 new machines at once against machine quota 5: exactly 5 registered, the rest machine_quota_exceeded."""
    pool = factories.LicensePoolFactory(organization=organization, quota=100, machine_quota=5)
    raw_key = factories.ApiKeyFactory(user=member_user).raw_key
    answers = all_at_once(60, activate(raw_key))
    assert [status for status, _ in answers].count(201) == 5
    assert {body["error"]["code"] for status, body in answers if status != 201} == {"machine_quota_exceeded"}
    assert Machine.objects.filter(pool=pool).registered().count() == 5


def test_30_simultaneous_retries_with_one_idempotency_key_take_one_session(member_user, organization):
    """30 retries of one request at once: one session; every answer is that session's 201 or 'in use'."""
    pool = factories.LicensePoolFactory(organization=organization, quota=50, machine_quota=50)
    raw_key = factories.ApiKeyFactory(user=member_user).raw_key

    def retry(n):
        response = Engine(Client(), raw_key).activate(machine_id="ci-7", headers={"Idempotency-Key": "build-1"})
        return response.status_code, response.json()

    answers = all_at_once(30, retry)
    assert EngineSession.objects.filter(pool=pool).count() == 1
    granted = [body for status, body in answers if status == 201]
    assert granted
    assert all(body == granted[0] for body in granted)
    assert {body["error"]["code"] for status, body in answers if status != 201} <= {"idempotency_key_in_use"}
    assert granted[0]["session"]["id"] == EngineSession.objects.get().public_id
    again = Engine(Client(), raw_key).activate(machine_id="ci-7", headers={"Idempotency-Key": "build-1"})
    assert again.json() == granted[0]


def test_a_retry_after_a_503_is_answered_afresh(member_user, organization):
    """An activation that ends in a database fault leaves its Idempotency-Key free, so the retry the
    503 asks for is decided afresh instead of being told the key is in use."""
    pool = factories.LicensePoolFactory(organization=organization)
    engine = Engine(Client(), factories.ApiKeyFactory(user=member_user).raw_key)
    with pool_lock_unavailable(pool):
        response = engine.activate(headers={"Idempotency-Key": "build-9"})
    assert response.status_code == 503
    retry = engine.activate(headers={"Idempotency-Key": "build-9"})
    assert retry.status_code == 201, retry.json()
    assert EngineSession.objects.filter(pool=pool).count() == 1


def test_expire_sessions_on_many_hosts_at_once_ends_each_lease_once(member_user, organization):
    """Several expire_sessions runs at once end every lapsed lease exactly once, all as expired."""
    pool = factories.LicensePoolFactory(organization=organization, quota=50, machine_quota=50)
    for _ in range(20):
        factories.EngineSessionFactory(pool=pool, lease_expires_at=timezone.now() - timedelta(seconds=5))
    live = factories.EngineSessionFactory(pool=pool)
    results = all_at_once(8, lambda n: expire_sessions())
    assert sum(result.sessions_expired for result in results) >= 20
    assert EngineSession.objects.filter(end_reason="expired").count() == 20
    live.refresh_from_db()
    assert live.is_live


def test_an_activation_holds_its_pool_but_not_the_organization(member_user, organization):
    """While an activation holds its pool row, another connection can still lock the organization:
    lock order is organization before pools, and removing a member takes them in that order."""
    from sessions_app import actions

    factories.LicensePoolFactory(organization=organization, product="RE", quota=2)
    free = []

    def on_granted(activation):
        free.append(organization_row_is_free(organization))

    actions.activate(api_key=None, user=member_user, product="RE", machine_id="agent-1", on_granted=on_granted)

    assert free == [True]


def test_a_member_removed_while_their_engine_activates_keeps_no_session(member_user, organization, owner):
    """The removal ends what the person holds under the pools' locks, which every activation takes:
    a removal started while an activation holds its pool (membership checked, session inserted, not
    yet committed) waits for it, then ends that session too. Without the pool locks it would commit
    first, and the activation's session would outlive the membership."""
    from organizations.actions import remove_member
    from sessions_app import actions

    factories.LicensePoolFactory(organization=organization, product="RE", quota=5)
    membership = organization.memberships.get(user=member_user)
    removal = {}

    def remove():
        try:
            removal["result"] = remove_member(organization=organization, actor=owner, membership_id=membership.pk)
        finally:
            connection.close()

    def on_granted(activation):
        # Inside the activation's transaction, its pool locked: start the removal and give it time.
        remover = removal["thread"] = threading.Thread(target=remove)
        remover.start()
        remover.join(timeout=1.5)
        removal["finished_while_pool_held"] = not remover.is_alive()

    activation = actions.activate(
        api_key=None, user=member_user, product="RE", machine_id="agent-1", on_granted=on_granted
    )
    removal["thread"].join()

    assert removal["finished_while_pool_held"] is False
    assert removal["result"].removed_at is not None
    activation.session.refresh_from_db()
    assert activation.session.end_reason == "member_removed"
    assert not EngineSession.objects.live().exists()


def hold_pool_lock(pool, seconds):
    """Lock the pool's row from another connection for a while; returns the thread and an event set
    once the lock is held."""
    held = threading.Event()

    def hold():
        try:
            with transaction.atomic():
                LicensePool.objects.select_for_update().get(pk=pool.pk)
                held.set()
                threading.Event().wait(seconds)
        finally:
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    return thread


def test_release_previous_takes_the_lock_of_every_pool_whose_sessions_it_ends(
    member_user, organization, other_organization
):
    """Issue 13, item 4: with a key for all their organizations, a person's release_previous in B
    ends their session on that machine in A's pool too, so it waits for A's pool lock like anything
    else that changes A's sessions, and ends the session once it has it."""
    factories.MembershipFactory(organization=other_organization, user=member_user)
    pool_a = factories.LicensePoolFactory(organization=organization, product="RE")
    factories.LicensePoolFactory(organization=other_organization, product="RE")
    raw_key = factories.ApiKeyFactory(user=member_user).raw_key
    in_a = Engine(Client(), raw_key).activate(machine_id="ci-1", org_id=organization.public_id).json()

    holder = hold_pool_lock(pool_a, seconds=1.5)
    answer = {}
    activation = threading.Thread(
        target=lambda: (
            answer.update(
                response=Engine(Client(), raw_key).activate(
                    machine_id="ci-1", org_id=other_organization.public_id, release_previous=True
                ),
                finished_while_a_was_held=holder.is_alive(),
            )
            or connection.close()
        )
    )
    activation.start()
    activation.join()
    holder.join()

    assert answer["response"].status_code == 201
    assert answer["finished_while_a_was_held"] is False
    assert EngineSession.objects.get(public_id=in_a["session"]["id"]).end_reason == "released"


def test_release_previous_from_two_organizations_at_once_never_deadlocks(member_user, organization, other_organization):
    """Each activation locks both pools in id order, whichever it counts against: two at once, each
    releasing the other's session, queue instead of deadlocking (a deadlock would answer 503)."""
    factories.MembershipFactory(organization=other_organization, user=member_user)
    factories.LicensePoolFactory(organization=organization, product="RE", quota=10)
    factories.LicensePoolFactory(organization=other_organization, product="RE", quota=10)
    raw_key = factories.ApiKeyFactory(user=member_user).raw_key
    for _ in range(3):
        for org in (organization, other_organization):
            Engine(Client(), raw_key).activate(machine_id="ci-1", org_id=org.public_id)

        def release_previous(n):
            org = (organization, other_organization)[n % 2]
            response = Engine(Client(), raw_key).activate(
                machine_id="ci-1", org_id=org.public_id, release_previous=True
            )
            return response.status_code

        assert all_at_once(8, release_previous) == [201] * 8
