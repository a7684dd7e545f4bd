"""Every row of the engine API's error table (contract/engine-api.md), through HTTP."""

from datetime import timedelta

import pytest
from django.utils import timezone

from organizations.audit import Action
from organizations.models import AuditEvent
from sessions_app.actions import request_fingerprint
from sessions_app.models import EngineSession, IdempotencyRecord
from tests import factories

from .conftest import Engine


def error_of(response):
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["message"]
    return body["error"]


# 400 invalid_request


@pytest.mark.parametrize(
    "raw_body",
    [b"", b"not json", b"[1, 2]", b'"RE"', b"null", b"42", b"\xff\xfe", b'{"product": "RE",', b"[" * 5000],
    ids=["empty", "not-json", "array", "string", "null", "number", "not-utf8", "truncated", "deeply-nested"],
)
def test_a_body_that_is_not_a_json_object_is_invalid(client, api_key, re_pool, raw_body):
    """A body that is not a JSON object is a 400 naming the body."""
    response = client.post(
        "/api/v1/engine/activate",
        data=raw_body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {api_key.raw_key}"},
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert "body" in error["details"]["fields"]
    assert not EngineSession.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"machine_id": "agent-1"}, "product"),
        ({"product": "RE"}, "machine_id"),
        ({"product": "RE", "machine_id": ""}, "machine_id"),
        ({"product": "XX", "machine_id": "agent-1"}, "product"),
        ({"product": "re", "machine_id": "agent-1"}, "product"),
        ({"product": 1, "machine_id": "agent-1"}, "product"),
        ({"product": "RE", "machine_id": 12345}, "machine_id"),
        ({"product": "RE", "machine_id": "a" * 129}, "machine_id"),
        ({"product": "RE", "machine_id": "agent 1"}, "machine_id"),
        ({"product": "RE", "machine_id": "agent/1"}, "machine_id"),
        ({"product": "RE", "machine_id": "agent\u00e91"}, "machine_id"),
        ({"product": "RE", "machine_id": "agent\x001"}, "machine_id"),
        ({"product": "RE", "machine_id": "agent-1", "org_id": 123}, "org_id"),
        ({"product": "RE", "machine_id": "agent-1", "org_id": "1" * 65}, "org_id"),
        ({"product": "RE", "machine_id": "agent-1", "org_id": "12 34"}, "org_id"),
        ({"product": "RE", "machine_id": "agent-1", "hostname": "h" * 256}, "hostname"),
        ({"product": "RE", "machine_id": "agent-1", "hostname": ["h"]}, "hostname"),
        ({"product": "RE", "machine_id": "agent-1", "hostname": "bad\x00host"}, "hostname"),
        ({"product": "RE", "machine_id": "agent-1", "engine_version": "9" * 65}, "engine_version"),
        ({"product": "RE", "machine_id": "agent-1", "release_previous": "true"}, "release_previous"),
        ({"product": "RE", "machine_id": "agent-1", "release_previous": 1}, "release_previous"),
        ({"product": "RE", "machine_id": "agent-1", "ephemeral": "yes"}, "ephemeral"),
        ({"product": "RE", "machine_id": "agent-1", "ephemeral": 0}, "ephemeral"),
    ],
)
def test_each_bad_field_is_named_with_its_reason(engine, re_pool, body, field):
    """A missing, mistyped, too long or out-of-alphabet field is a 400 that names that field."""
    response = engine.post("engine/activate", body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert list(error["details"]["fields"]) == [field]
    assert error["details"]["fields"][field]
    assert not EngineSession.objects.exists()


def test_every_bad_field_is_reported_at_once(engine, re_pool):
    """Several bad fields are reported together, so one round trip shows everything to fix."""
    response = engine.post("engine/activate", {"product": "X", "machine_id": "a b", "ephemeral": "no"})
    assert set(error_of(response)["details"]["fields"]) == {"product", "machine_id", "ephemeral"}


def test_a_128_character_machine_id_is_accepted(engine, re_pool):
    """The longest machine id the contract allows activates."""
    assert engine.activate(machine_id="A-z0.9_:" * 16).status_code == 201


def test_an_overlong_idempotency_key_is_invalid(engine, re_pool):
    """An Idempotency-Key over 255 characters is a 400 naming the header, and nothing is taken."""
    response = engine.activate(headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 400
    assert "Idempotency-Key" in error_of(response)["details"]["fields"]
    assert not EngineSession.objects.exists()


# 401 invalid_api_key


def _unauthorized(response):
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "invalid_api_key"
    return error


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "kat_abc",
        "Bearer kat_short",
        "Bearer  kat_" + "x" * 43 + " y",
    ],
    ids=["missing", "empty", "no-key", "blank-key", "basic", "no-scheme", "malformed", "two-words"],
)
def test_a_missing_or_malformed_header_is_refused(client, re_pool, authorization):
    """Without a well-formed Bearer header the answer is 401 invalid_api_key."""
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.post(
        "/api/v1/engine/activate",
        data={"product": "RE", "machine_id": "a"},
        content_type="application/json",
        headers=headers,
    )
    _unauthorized(response)


def test_unknown_revoked_and_expired_keys_get_one_answer(client, member_user, re_pool):
    """Unknown, revoked and expired keys, and keys of deactivated people, all get the same 401."""
    revoked = factories.ApiKeyFactory(user=member_user, revoked_at=timezone.now())
    expired = factories.ApiKeyFactory(user=member_user, expires_at=timezone.now() - timedelta(seconds=1))
    inactive_user = factories.MembershipFactory(organization=re_pool.organization).user
    inactive = factories.ApiKeyFactory(user=inactive_user)
    inactive_user.is_active = False
    inactive_user.save()
    unknown = "kat_" + "A" * 43
    answers = []
    for raw_key in (unknown, revoked.raw_key, expired.raw_key, inactive.raw_key):
        response = Engine(client, raw_key).activate()
        answers.append(_unauthorized(response))
    assert all(answer == answers[0] for answer in answers)
    assert not EngineSession.objects.exists()


def test_a_signed_in_browser_session_is_not_an_api_key(member_client, re_pool):
    """Session cookies are ignored: a signed-in person's browser still needs a key."""
    response = member_client.post(
        "/api/v1/engine/activate", data={"product": "RE", "machine_id": "a"}, content_type="application/json"
    )
    _unauthorized(response)


def test_the_scheme_is_case_insensitive(client, api_key, re_pool):
    """'bearer' works like 'Bearer', as RFC 6750 allows."""
    response = client.post(
        "/api/v1/engine/activate",
        data={"product": "RE", "machine_id": "a"},
        content_type="application/json",
        headers={"Authorization": f"bearer {api_key.raw_key}"},
    )
    assert response.status_code == 201


# 403


def test_kse_needs_a_licensed_user(engine, kse_pool):
    """A member who is not a licensed user of the KSE pool is refused with not_licensed."""
    response = engine.activate(product="KSE")
    assert response.status_code == 403
    assert error_of(response)["code"] == "not_licensed"


def test_a_withdrawn_kse_seat_no_longer_activates(engine, kse_pool, member_user):
    """A revoked seat is the same as none."""
    factories.LicensedUserFactory(pool=kse_pool, user=member_user, revoked_at=timezone.now())
    assert error_of(engine.activate(product="KSE"))["code"] == "not_licensed"


@pytest.mark.parametrize(
    ("starts", "expires"),
    [(timedelta(days=-400), timedelta(days=-1)), (timedelta(days=1), timedelta(days=30))],
    ids=["ended", "not-started"],
)
def test_a_pool_out_of_its_term_refuses(engine, organization, starts, expires):
    """A subscription that has ended, or not begun, answers 403 license_expired."""
    now = timezone.now()
    factories.LicensePoolFactory(organization=organization, starts_at=now + starts, expires_at=now + expires)
    response = engine.activate()
    assert response.status_code == 403
    assert error_of(response)["code"] == "license_expired"
    assert not EngineSession.objects.exists()


def test_the_machine_allow_list_is_enforced(engine, re_pool):
    """With an allow-list, a machine id matching no pattern gets machine_not_allowed; a match activates."""
    re_pool.machine_allow_list = "ci-*\nbuild-??"
    re_pool.save()
    refused = engine.activate(machine_id="laptop-7")
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "machine_not_allowed"
    assert engine.activate(machine_id="ci-runner-3").status_code == 201
    assert engine.activate(machine_id="build-12").status_code == 201


# 404


def test_an_unknown_organization_and_a_foreign_one_look_the_same(engine, re_pool, other_organization):
    """org_id of an organization the user is not in is answered exactly like an unknown one."""
    factories.LicensePoolFactory(organization=other_organization)
    foreign = error_of(engine.activate(org_id=other_organization.public_id))
    unknown = error_of(engine.activate(org_id="999"))
    assert foreign["code"] == unknown["code"] == "organization_not_found"
    assert engine.activate(org_id=other_organization.public_id).status_code == 404


def test_a_key_restricted_to_one_organization_cannot_use_another(client, member_user, re_pool, other_organization):
    """A key restricted to one organization answers organization_not_found for the person's other one."""
    factories.MembershipFactory(organization=other_organization, user=member_user)
    factories.LicensePoolFactory(organization=other_organization)
    restricted = factories.ApiKeyFactory(user=member_user, organization=other_organization)
    engine = Engine(client, restricted.raw_key)
    assert error_of(engine.activate(org_id=re_pool.organization.public_id))["code"] == "organization_not_found"
    granted = engine.activate()
    assert granted.status_code == 201
    assert granted.json()["organization"]["id"] == other_organization.public_id


def test_a_removed_member_is_not_found(engine, re_pool, member_user):
    """After removal from the organization its id is unknown to the person's key."""
    member_user.memberships.update(removed_at=timezone.now())
    assert error_of(engine.activate(org_id=re_pool.organization.public_id))["code"] == "organization_not_found"


def test_an_organization_without_that_product_has_no_pool(engine, re_pool, organization):
    """Asking for KSE where only RE was bought is 404 no_license_pool."""
    response = engine.activate(product="KSE", org_id=organization.public_id)
    assert response.status_code == 404
    assert error_of(response)["code"] == "no_license_pool"
    assert error_of(engine.activate(product="KSE"))["code"] == "no_license_pool"


@pytest.mark.parametrize("action", ["heartbeat", "release"])
def test_unknown_and_other_peoples_sessions_are_not_found(engine, re_pool, action):
    """A session id that is unknown, malformed, or another user's is 404 session_not_found."""
    someone_else = factories.EngineSessionFactory(pool=re_pool)
    for session_id in ("s_doesnotexist", someone_else.public_id, "x" * 300, "%00", "s_" + "a" * 60):
        response = engine.post(f"engine/sessions/{session_id}/{action}")
        assert response.status_code == 404, session_id
        assert error_of(response)["code"] == "session_not_found"
    someone_else.refresh_from_db()
    assert someone_else.is_live


# 409


def test_several_organizations_need_a_choice(engine, member_user, re_pool, other_organization):
    """Without org_id, a person in two organizations with RE is asked to choose, and told the choices."""
    factories.MembershipFactory(organization=other_organization, user=member_user)
    factories.LicensePoolFactory(organization=other_organization)
    response = engine.activate()
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "organization_required"
    assert sorted(error["details"]["organizations"], key=lambda o: o["name"]) == [
        {"id": re_pool.organization.public_id, "name": "Acme QA"},
        {"id": other_organization.public_id, "name": "Rival Labs"},
    ]
    assert engine.activate(org_id=other_organization.public_id).status_code == 201


def test_the_session_quota_refusal_names_the_figures(engine, re_pool):
    """When live sessions fill the quota the next activation is 409 with the quota and the pool in its message."""
    for n in range(3):
        assert engine.activate(machine_id=f"agent-{n}").status_code == 201
    response = engine.activate(machine_id="agent-0")
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "session_quota_exceeded"
    assert "3 of 3" in error["message"]
    assert "Acme QA" in error["message"]
    assert error["details"] == {"quota": 3, "live_sessions": 3, "offline_licenses": 0, "waiting": 0}
    assert EngineSession.objects.live().count() == 3


def test_unexpired_offline_licenses_take_from_the_quota(engine, re_pool):
    """Live sessions plus unexpired offline licenses never exceed the quota; expired offline licenses do not count."""
    factories.OfflineLicenseFactory(pool=re_pool)
    factories.OfflineLicenseFactory(pool=re_pool)
    factories.OfflineLicenseFactory(pool=re_pool, expires_at=timezone.now() - timedelta(days=1))
    assert engine.activate(machine_id="agent-0").status_code == 201
    error = error_of(engine.activate(machine_id="agent-1"))
    assert error["code"] == "session_quota_exceeded"
    assert error["details"] == {"quota": 3, "live_sessions": 1, "offline_licenses": 2, "waiting": 0}


def test_the_machine_quota_refuses_a_new_machine_only(engine, re_pool):
    """With the machine quota full a new machine is refused; a registered one still activates."""
    re_pool.quota = 10
    re_pool.save()
    for n in range(3):
        response = engine.activate(machine_id=f"agent-{n}")
        assert response.status_code == 201
        engine.post(f"engine/sessions/{response.json()['session']['id']}/release")
    refused = engine.activate(machine_id="agent-new")
    assert refused.status_code == 409
    error = error_of(refused)
    assert error["code"] == "machine_quota_exceeded"
    assert "3 of 3" in error["message"]
    assert engine.activate(machine_id="agent-1").status_code == 201


def test_a_request_still_in_progress_holds_its_idempotency_key(engine, api_key, re_pool):
    """A duplicate arriving while the first request with that key runs is 409 idempotency_key_in_use."""
    body = {"product": "RE", "machine_id": "agent-1"}
    IdempotencyRecord.objects.create(api_key=api_key, key="retry-1", request_fingerprint=request_fingerprint(body))
    response = engine.post("engine/activate", body, **{"Idempotency-Key": "retry-1"})
    assert response.status_code == 409
    assert error_of(response)["code"] == "idempotency_key_in_use"
    assert not EngineSession.objects.exists()


# 410


def test_a_released_session_is_terminated(engine, re_pool):
    """A heartbeat after release is 410 with reason released, and the session stays ended."""
    session_id = engine.activate().json()["session"]["id"]
    engine.post(f"engine/sessions/{session_id}/release")
    response = engine.post(f"engine/sessions/{session_id}/heartbeat")
    assert response.status_code == 410
    error = error_of(response)
    assert error["code"] == "session_terminated"
    assert error["details"] == {"reason": "released"}


def test_a_lapsed_lease_is_never_revived(engine, api_key, re_pool):
    """A heartbeat after the lease ran out is 410 expired, and the session is marked expired, not extended."""
    session = factories.EngineSessionFactory(
        pool=re_pool, user=api_key.user, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = engine.post(f"engine/sessions/{session.public_id}/heartbeat")
    assert response.status_code == 410
    assert error_of(response)["details"] == {"reason": "expired"}
    session.refresh_from_db()
    assert session.end_reason == "expired"
    assert session.ended_at == session.lease_expires_at
    assert engine.post(f"engine/sessions/{session.public_id}/heartbeat").status_code == 410


@pytest.mark.parametrize("reason", ["withdrawn", "machine_deactivated", "member_removed", "quota_reduced"])
def test_a_session_ended_by_an_admin_tells_the_engine_why(engine, api_key, re_pool, reason):
    """Sessions ended elsewhere answer the heartbeat with their reason."""
    session = factories.EngineSessionFactory(pool=re_pool, user=api_key.user)
    EngineSession.objects.filter(pk=session.pk).end(reason)
    response = engine.post(f"engine/sessions/{session.public_id}/heartbeat")
    assert response.status_code == 410
    assert error_of(response)["details"] == {"reason": reason}


def test_an_ended_subscription_ends_the_session_at_its_next_heartbeat(engine, api_key, re_pool):
    """Once the pool's term is over a heartbeat answers 410 license_expired."""
    session_id = engine.activate().json()["session"]["id"]
    re_pool.starts_at = timezone.now() - timedelta(days=60)
    re_pool.expires_at = timezone.now() - timedelta(seconds=1)
    re_pool.save()
    response = engine.post(f"engine/sessions/{session_id}/heartbeat")
    assert response.status_code == 410
    assert error_of(response)["details"] == {"reason": "license_expired"}


# 422


def test_an_idempotency_key_with_a_different_body_is_refused(engine, re_pool):
    """Reusing an Idempotency-Key for a different request is 422, and takes nothing."""
    assert engine.activate(machine_id="agent-1", headers={"Idempotency-Key": "k-1"}).status_code == 201
    response = engine.activate(machine_id="agent-2", headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 422
    assert error_of(response)["code"] == "idempotency_key_reused"
    assert EngineSession.objects.count() == 1


# Refusals are audited


def test_every_refused_activation_is_audited(engine, api_key, re_pool):
    """A refusal leaves an activation.refused event with the code, even though the activation rolled back."""
    re_pool.quota = 0
    re_pool.save()
    error_of(engine.activate(machine_id="agent-9"))
    event = AuditEvent.objects.get(action=Action.ACTIVATION_REFUSED)
    assert event.actor == api_key.user
    assert event.organization == re_pool.organization
    assert event.after["code"] == "session_quota_exceeded"
    assert event.ip_address == "127.0.0.1"


def test_a_refusal_through_a_restricted_key_is_in_that_organizations_log(
    client, member_user, organization, re_pool, other_organization
):
    """A key restricted to one organization is refused there, so that organization's admins see the refusal,
    even though its owner belongs to another organization with the same product."""
    factories.MembershipFactory(organization=other_organization, user=member_user)
    factories.LicensePoolFactory(organization=other_organization, product="RE")
    re_pool.quota = 0
    re_pool.save()
    restricted = Engine(client, factories.ApiKeyFactory(user=member_user, organization=organization).raw_key)
    assert error_of(restricted.activate())["code"] == "session_quota_exceeded"
    assert AuditEvent.objects.get(action=Action.ACTIVATION_REFUSED).organization == organization
