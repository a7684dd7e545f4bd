from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from licenses import actions
from licenses.errors import InvalidRequest, LicenseExpired, MachineNotAllowed, SeatQuotaExceeded, SessionQuotaExceeded
from licenses.models import LicensedUser, LicensePool, OfflineLicense
from organizations.models import AuditEvent
from sessions_app.models import EndReason, EngineSession, Machine
from tests import factories


def audit_actions(organization):
    return list(AuditEvent.objects.for_org(organization).values_list("action", flat=True))


# provision_pool


def test_provisioning_creates_a_pool_with_the_defaults(organization, owner):
    """A new pool: machine quota equal to the quota, starting now, running one year, 300 s leases."""
    result = actions.provision_pool(organization=organization, product="RE", quota=10, actor=owner)
    pool = result.pool
    assert result.created
    assert (pool.quota, pool.machine_quota, pool.lease_seconds, pool.machine_idle_days) == (10, 10, 300, None)
    assert pool.is_in_force(timezone.now())
    one_year = timezone.now().date().replace(year=timezone.now().year + 1) - timedelta(days=1)
    assert pool.expires_at == datetime(one_year.year, one_year.month, one_year.day, 23, 59, 59, tzinfo=UTC)
    assert audit_actions(organization).count("pool.provisioned") == 1


def test_provisioning_again_changes_the_same_pool(organization):
    """A renewal changes the terms of the existing pool instead of adding a second one."""
    first = actions.provision_pool(organization=organization, product="RE", quota=10, machine_quota=20).pool
    later = first.expires_at + timedelta(days=365)
    result = actions.provision_pool(organization=organization, product="RE", quota=12, expires_at=later)
    assert not result.created
    assert result.pool.pk == first.pk
    pool = LicensePool.objects.get()
    assert (pool.quota, pool.machine_quota, pool.expires_at) == (12, 20, later)


def test_a_machine_quota_that_followed_the_quota_keeps_following_it(organization):
    """Changing the quota of a pool whose machine quota equalled it moves the machine quota too."""
    actions.provision_pool(organization=organization, product="RE", quota=10)
    pool = actions.provision_pool(organization=organization, product="RE", quota=15).pool
    assert pool.machine_quota == 15


@pytest.mark.parametrize(
    ("terms", "field"),
    [
        ({"quota": -1}, "quota"),
        ({"quota": 3, "machine_quota": -2}, "machine_quota"),
        ({"quota": 3, "lease_seconds": 10}, "lease_seconds"),
        ({"quota": 3, "machine_idle_days": -1}, "machine_idle_days"),
        ({"quota": 3, "expires_at": timezone.now() - timedelta(days=400)}, "expires_at"),
        ({"quota": 3, "product": "XYZ"}, "product"),
    ],
)
def test_impossible_terms_are_refused_and_nothing_is_written(organization, terms, field):
    """Bad terms raise InvalidRequest naming the field; no pool and no audit event is written."""
    with pytest.raises(InvalidRequest) as refused:
        actions.provision_pool(organization=organization, **({"product": "RE"} | terms))
    assert field in refused.value.details["fields"]
    assert not LicensePool.objects.exists()
    assert "pool.provisioned" not in audit_actions(organization)


def test_lowering_the_quota_ends_the_newest_sessions(re_pool):
    """Below what is in use, the newest live sessions end with reason quota_reduced; older ones keep running."""
    now = timezone.now()
    sessions = [
        factories.EngineSessionFactory(pool=re_pool, started_at=now - timedelta(minutes=30 - i)) for i in range(3)
    ]
    result = actions.provision_pool(organization=re_pool.organization, product="RE", quota=1)
    assert result.sessions_ended == 2
    oldest, *newest = sessions
    assert EngineSession.objects.get(pk=oldest.pk).is_live
    for session in newest:
        session.refresh_from_db()
        assert session.end_reason == EndReason.QUOTA_REDUCED
    assert re_pool.usage().live_sessions == 1


def test_offline_licenses_count_when_lowering_the_quota(re_pool):
    """An unexpired offline license keeps its license: the sessions make room for it."""
    factories.OfflineLicenseFactory(pool=re_pool)
    kept, ended = (
        factories.EngineSessionFactory(pool=re_pool, started_at=timezone.now() - timedelta(minutes=m)) for m in (9, 1)
    )
    actions.provision_pool(organization=re_pool.organization, product="RE", quota=2)
    assert EngineSession.objects.get(pk=kept.pk).is_live
    assert EngineSession.objects.get(pk=ended.pk).end_reason == EndReason.QUOTA_REDUCED


# grant_licenses


def test_granting_licenses_several_members_at_once(kse_pool, members, owner):
    """Two members are granted together: two active seats and two grant events."""
    seats = actions.grant_licenses(pool=kse_pool, users=members[:2], actor=owner, ip_address="10.0.0.1")
    assert {seat.user for seat in seats} == set(members[:2])
    assert kse_pool.usage().licensed_users == 2
    events = AuditEvent.objects.filter(action="license.granted")
    assert events.count() == 2
    assert {event.ip_address for event in events} == {"10.0.0.1"}


def test_granting_over_the_quota_is_refused_whole(kse_pool, members, owner):
    """Four members for three licenses: nobody is licensed and the refusal names the figures."""
    with pytest.raises(SeatQuotaExceeded) as refused:
        actions.grant_licenses(pool=kse_pool, users=members[:4], actor=owner)
    assert "Only 3 of 3 licenses are available in Acme QA" in refused.value.message
    assert not LicensedUser.objects.exists()
    assert "license.granted" not in audit_actions(kse_pool.organization)


def test_a_full_pool_says_revoke_one_first(kse_pool, members, owner):
    """With every license assigned, the refusal reads as Katalon's admins expect."""
    actions.grant_licenses(pool=kse_pool, users=members[:3], actor=owner)
    with pytest.raises(SeatQuotaExceeded) as refused:
        actions.grant_licenses(pool=kse_pool, users=[members[3]], actor=owner)
    assert refused.value.message == "3 of 3 licenses are assigned in Acme QA; revoke one first."


def test_unexpired_offline_licenses_take_seats(kse_pool, members, owner):
    """Offline licenses count against the KSE quota; expired ones do not."""
    factories.OfflineLicenseFactory(pool=kse_pool)
    factories.OfflineLicenseFactory(pool=kse_pool, expires_at=timezone.now() - timedelta(days=1))
    actions.grant_licenses(pool=kse_pool, users=members[:2], actor=owner)
    with pytest.raises(SeatQuotaExceeded):
        actions.grant_licenses(pool=kse_pool, users=[members[2]], actor=owner)


def test_only_members_can_be_licensed(kse_pool, members, owner):
    """A person outside the organization, or a removed member, is refused and nobody is granted."""
    stranger = factories.UserFactory(name="Sam Stranger")
    with pytest.raises(InvalidRequest) as refused:
        actions.grant_licenses(pool=kse_pool, users=[members[0], stranger], actor=owner)
    assert "Sam Stranger is not a member" in refused.value.message
    removed = factories.MembershipFactory(organization=kse_pool.organization, removed_at=timezone.now()).user
    with pytest.raises(InvalidRequest):
        actions.grant_licenses(pool=kse_pool, users=[removed], actor=owner)
    assert not LicensedUser.objects.exists()


def test_granting_an_already_licensed_member_again_changes_nothing(kse_pool, members, owner):
    """A repeated grant is a no-op for those already licensed, not a refusal and not a second seat."""
    actions.grant_licenses(pool=kse_pool, users=[members[0]], actor=owner)
    seats = actions.grant_licenses(pool=kse_pool, users=[members[0], members[1]], actor=owner)
    assert [seat.user for seat in seats] == [members[1]]
    assert LicensedUser.objects.active().count() == 2
    assert actions.grant_licenses(pool=kse_pool, users=[members[0]], actor=owner) == []


def test_runtime_engine_licenses_are_not_assigned_to_people(re_pool, members, owner):
    """RE licenses belong to every member; granting one is refused."""
    with pytest.raises(InvalidRequest):
        actions.grant_licenses(pool=re_pool, users=[members[0]], actor=owner)


@pytest.mark.parametrize(
    "dates",
    [
        {"starts_at": timezone.now() - timedelta(days=400), "expires_at": timezone.now() - timedelta(days=1)},
        {"starts_at": timezone.now() + timedelta(days=1), "expires_at": timezone.now() + timedelta(days=400)},
    ],
    ids=["expired", "not-started"],
)
def test_a_pool_out_of_force_grants_nothing(organization, members, owner, dates):
    """An expired or not-yet-started subscription refuses grants."""
    pool = factories.LicensePoolFactory(organization=organization, product="KSE", quota=3, **dates)
    with pytest.raises(LicenseExpired):
        actions.grant_licenses(pool=pool, users=[members[0]], actor=owner)


# revoke_licenses


def test_revoking_ends_the_users_live_sessions_in_that_pool(kse_pool, re_pool, members, owner):
    """A withdrawn license ends the person's KSE session at once (withdrawn); their RE session runs on."""
    actions.grant_licenses(pool=kse_pool, users=members[:2], actor=owner)
    kse_session = factories.EngineSessionFactory(pool=kse_pool, user=members[0])
    re_session = factories.EngineSessionFactory(pool=re_pool, user=members[0])
    other = factories.EngineSessionFactory(pool=kse_pool, user=members[1])
    revoked = actions.revoke_licenses(pool=kse_pool, users=[members[0]], actor=owner, ip_address="10.0.0.2")
    assert [seat.user for seat in revoked] == [members[0]]
    assert EngineSession.objects.get(pk=kse_session.pk).end_reason == EndReason.WITHDRAWN
    assert EngineSession.objects.get(pk=re_session.pk).is_live
    assert EngineSession.objects.get(pk=other.pk).is_live
    assert kse_pool.usage().licensed_users == 1
    seat = LicensedUser.objects.get(user=members[0])
    assert seat.revoked_by == owner
    assert AuditEvent.objects.get(action="license.revoked").ip_address == "10.0.0.2"


def test_revoking_frees_the_license_for_someone_else(kse_pool, members, owner):
    """After a revoke, the freed license can be granted again."""
    actions.grant_licenses(pool=kse_pool, users=members[:3], actor=owner)
    actions.revoke_licenses(pool=kse_pool, users=[members[2]], actor=owner)
    actions.grant_licenses(pool=kse_pool, users=[members[3]], actor=owner)
    assert set(LicensedUser.objects.active().values_list("user", flat=True)) == {
        m.pk for m in [*members[:2], members[3]]
    }


def test_revoking_someone_without_a_license_changes_nothing(kse_pool, members, owner):
    """Nobody to revoke: no write, no event."""
    assert actions.revoke_licenses(pool=kse_pool, users=[members[0]], actor=owner) == []
    assert "license.revoked" not in audit_actions(kse_pool.organization)


# withdraw_session and deactivate_machine


def test_an_admin_ends_one_session(re_pool, admin_user):
    """Ending a live session frees its license at once, with reason withdrawn and an audit event."""
    session = factories.EngineSessionFactory(pool=re_pool)
    other = factories.EngineSessionFactory(pool=re_pool)
    assert actions.withdraw_session(organization=re_pool.organization, session=session, actor=admin_user)
    session.refresh_from_db()
    assert session.end_reason == EndReason.WITHDRAWN
    assert EngineSession.objects.get(pk=other.pk).is_live
    assert re_pool.usage().live_sessions == 1
    assert "session.ended" in audit_actions(re_pool.organization)


def test_ending_an_ended_session_is_a_no_op(re_pool, admin_user):
    """A session that already ended stays as it ended."""
    session = factories.EngineSessionFactory(pool=re_pool, ended_at=timezone.now(), end_reason="released")
    assert not actions.withdraw_session(organization=re_pool.organization, session=session, actor=admin_user)
    session.refresh_from_db()
    assert session.end_reason == "released"


def test_a_session_of_another_organization_cannot_be_ended(re_pool, other_organization, admin_user):
    """The organization given must own the session's pool."""
    session = factories.EngineSessionFactory(pool=re_pool)
    from licenses.errors import SessionNotFound

    with pytest.raises(SessionNotFound):
        actions.withdraw_session(organization=other_organization, session=session, actor=admin_user)
    assert EngineSession.objects.get(pk=session.pk).is_live


def test_deactivating_a_machine_ends_its_sessions_and_frees_its_slot(re_pool, admin_user):
    """Its live sessions end with machine_deactivated and it no longer counts as registered."""
    machine = factories.MachineFactory(pool=re_pool)
    sessions = factories.EngineSessionFactory.create_batch(2, pool=re_pool, machine=machine)
    elsewhere = factories.EngineSessionFactory(pool=re_pool)
    assert actions.deactivate_machine(machine=machine, actor=admin_user, ip_address="10.0.0.3")
    assert {s.end_reason for s in EngineSession.objects.filter(pk__in=[s.pk for s in sessions])} == {
        EndReason.MACHINE_DEACTIVATED
    }
    assert EngineSession.objects.get(pk=elsewhere.pk).is_live
    assert not Machine.objects.get(pk=machine.pk).is_registered
    assert re_pool.usage().registered_machines == 1
    assert AuditEvent.objects.get(action="machine.deactivated").ip_address == "10.0.0.3"
    assert not actions.deactivate_machine(machine=machine, actor=admin_user)


def test_deactivating_an_ephemeral_machine_records_that_it_was_deactivated(re_pool, admin_user):
    """Issue 13, item 8: the reason says what happened (an admin deactivated it), not "ephemeral",
    although its last session ended with it."""
    machine = factories.MachineFactory(pool=re_pool, ephemeral=True)
    session = factories.EngineSessionFactory(pool=re_pool, machine=machine)
    assert actions.deactivate_machine(machine=machine, actor=admin_user)
    machine.refresh_from_db()
    assert machine.deactivation_reason == "deactivated"
    session.refresh_from_db()
    assert session.end_reason == EndReason.MACHINE_DEACTIVATED


# create_offline_license


def test_an_offline_license_is_signed_and_takes_a_license(re_pool, owner):
    """The file names the organization, product and machine, and the license is no longer available."""
    from licenses.signing import verify_license_file

    expires_at = timezone.now() + timedelta(days=10)
    offline = actions.create_offline_license(
        pool=re_pool, machine_id="build-07.lab:1", expires_at=expires_at, actor=owner, ip_address="10.0.0.4"
    )
    payload = verify_license_file(offline.file_content)
    assert payload["license_id"] == offline.license_id
    assert payload["organization"] == {"id": re_pool.organization.public_id, "name": "Acme QA"}
    assert (payload["product"], payload["machine_id"]) == ("RE", "build-07.lab:1")
    assert payload["expires_at"] == expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert payload["issued_at"].endswith("Z")
    assert re_pool.usage().available == 2
    assert AuditEvent.objects.get(action="offline_license.created").ip_address == "10.0.0.4"
    assert offline.filename == "RE_build-07.lab:1.lic"


@pytest.mark.parametrize("machine_id", ["", "x" * 129, "has space", "semi;colon", "ümlaut"])
def test_an_invalid_machine_id_is_refused(re_pool, owner, machine_id):
    """Machine ids are 1-128 characters of A-Z a-z 0-9 . _ : -."""
    with pytest.raises(InvalidRequest):
        actions.create_offline_license(
            pool=re_pool, machine_id=machine_id, expires_at=timezone.now() + timedelta(days=1), actor=owner
        )
    assert not OfflineLicense.objects.exists()


def test_an_offline_license_cannot_outlast_the_subscription_or_start_expired(re_pool, owner):
    """Expiry after the subscription's end, or in the past, is refused with the reason."""
    with pytest.raises(InvalidRequest) as refused:
        actions.create_offline_license(
            pool=re_pool, machine_id="m1", expires_at=re_pool.expires_at + timedelta(seconds=1), actor=owner
        )
    assert "cannot outlast the subscription" in refused.value.message
    with pytest.raises(InvalidRequest) as refused:
        actions.create_offline_license(
            pool=re_pool, machine_id="m1", expires_at=timezone.now() - timedelta(minutes=1), actor=owner
        )
    assert "future" in refused.value.message
    actions.create_offline_license(pool=re_pool, machine_id="m1", expires_at=re_pool.expires_at, actor=owner)


def test_no_offline_license_without_an_available_license(re_pool, kse_pool, members, owner):
    """RE: live sessions and offline licenses fill the quota; KSE: licensed users do."""
    factories.EngineSessionFactory.create_batch(2, pool=re_pool)
    factories.OfflineLicenseFactory(pool=re_pool)
    expires_at = timezone.now() + timedelta(days=5)
    with pytest.raises(SessionQuotaExceeded) as refused:
        actions.create_offline_license(pool=re_pool, machine_id="m1", expires_at=expires_at, actor=owner)
    assert "3 of 3 are taken (2 live sessions, 1 offline licenses)" in refused.value.message
    actions.grant_licenses(pool=kse_pool, users=members[:3], actor=owner)
    with pytest.raises(SessionQuotaExceeded):
        actions.create_offline_license(pool=kse_pool, machine_id="m1", expires_at=expires_at, actor=owner)
    assert OfflineLicense.objects.count() == 1


def test_no_offline_license_from_a_pool_out_of_force(organization, owner):
    """An expired subscription issues nothing."""
    pool = factories.LicensePoolFactory(
        organization=organization,
        starts_at=timezone.now() - timedelta(days=400),
        expires_at=timezone.now() - timedelta(days=1),
    )
    with pytest.raises(LicenseExpired):
        actions.create_offline_license(
            pool=pool, machine_id="m1", expires_at=timezone.now() + timedelta(days=1), actor=owner
        )


def test_the_allow_list_applies_to_offline_licenses(re_pool, owner):
    """A pool restricted to some machine ids issues files only for those."""
    re_pool.machine_allow_list = "lab-*\n"
    re_pool.save()
    expires_at = timezone.now() + timedelta(days=1)
    with pytest.raises(MachineNotAllowed):
        actions.create_offline_license(pool=re_pool, machine_id="laptop-1", expires_at=expires_at, actor=owner)
    actions.create_offline_license(pool=re_pool, machine_id="lab-1", expires_at=expires_at, actor=owner)


# Only owners and admins manage licenses, whoever calls the action


def _license_writes(pool, user, actor):
    session = factories.EngineSessionFactory(pool=pool, user=user)
    return {
        "grant": lambda: actions.grant_licenses(pool=pool, users=[user], actor=actor),
        "revoke": lambda: actions.revoke_licenses(pool=pool, users=[user], actor=actor),
        "withdraw": lambda: actions.withdraw_session(organization=pool.organization, session=session, actor=actor),
        "deactivate": lambda: actions.deactivate_machine(machine=session.machine, actor=actor),
        "offline": lambda: actions.create_offline_license(
            pool=pool, machine_id="laptop-9", expires_at=timezone.now() + timedelta(days=2), actor=actor
        ),
    }


@pytest.mark.parametrize("write", ["grant", "revoke", "withdraw", "deactivate", "offline"])
def test_a_member_cannot_manage_licenses_through_the_actions(kse_pool, members, owner, write):
    """A plain member is refused by the action itself, not only by the page, and nothing changes."""
    actions.grant_licenses(pool=kse_pool, users=[members[1]], actor=owner)
    calls = _license_writes(kse_pool, members[1], actor=members[0])
    events = AuditEvent.objects.count()

    with pytest.raises(actions.NotAllowed):
        calls[write]()

    assert LicensedUser.objects.active().filter(pool=kse_pool).count() == 1
    assert EngineSession.objects.live().filter(pool=kse_pool).count() == 1
    assert Machine.objects.registered().filter(pool=kse_pool).count() == 1
    assert not OfflineLicense.objects.exists()
    assert AuditEvent.objects.count() == events


@pytest.mark.parametrize("write", ["grant", "revoke", "withdraw", "deactivate", "offline"])
def test_another_organizations_admin_cannot_manage_licenses(kse_pool, members, owner, other_organization, write):
    """Being an owner elsewhere gives no say over this organization's licenses."""
    actions.grant_licenses(pool=kse_pool, users=[members[1]], actor=owner)
    stranger = other_organization.memberships.get(role="owner").user
    with pytest.raises(actions.NotAllowed):
        _license_writes(kse_pool, members[1], actor=stranger)[write]()
    assert LicensedUser.objects.active().filter(pool=kse_pool).count() == 1


def test_the_installation_itself_may_manage_licenses(kse_pool, members):
    """actor=None is an operator's script or command, which no organization role constrains."""
    assert len(actions.grant_licenses(pool=kse_pool, users=[members[0]], actor=None)) == 1


# The database's clock decides (issue 13, item 4): a web host whose clock runs ahead or behind
# must not refuse or allow what the database's "now" says otherwise.


@pytest.fixture
def app_clock_ahead(monkeypatch):
    """Set the app's clock (django.utils.timezone.now) ahead of the database's by the given delta."""
    real_now = timezone.now

    def set_ahead(delta):
        monkeypatch.setattr(timezone, "now", lambda: real_now() + delta)

    return set_ahead


def test_grants_check_the_subscription_by_the_databases_clock(kse_pool, members, owner, app_clock_ahead):
    """A subscription still running by the database's clock grants, whatever the app's clock says."""
    LicensePool.objects.filter(pk=kse_pool.pk).update(expires_at=timezone.now() + timedelta(minutes=2))
    app_clock_ahead(timedelta(minutes=10))
    assert len(actions.grant_licenses(pool=kse_pool, users=members[:1], actor=owner)) == 1


def test_offline_licenses_check_now_by_the_databases_clock(re_pool, owner, app_clock_ahead):
    """An expiry in the future by the database's clock is accepted, whatever the app's clock says."""
    app_clock_ahead(timedelta(hours=1))
    expires_at = datetime.now(UTC) + timedelta(minutes=30)
    offline = actions.create_offline_license(pool=re_pool, machine_id="lab-1", expires_at=expires_at, actor=owner)
    assert offline.expires_at == expires_at
