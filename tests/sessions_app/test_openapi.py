"""The OpenAPI document is valid OpenAPI 3.1 and describes what the server really answers."""

import re

import pytest
from django.db.models.functions import Now
from django.test import override_settings
from django.utils import timezone
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from sessions_app.models import IdempotencyRecord, QueueTicket
from tests import factories

from .conftest import Engine


@pytest.fixture
def document(client, db):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_the_document_is_valid_openapi_3_1(document):
    """openapi-spec-validator accepts it as 3.1, and it is served without a key."""
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_the_document_names_every_error_code_of_the_contract(document):
    """Each code of the contract's error table is in the Error schema."""
    codes = set(document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"])
    assert codes >= {
        "invalid_request",
        "invalid_api_key",
        "not_licensed",
        "license_expired",
        "machine_not_allowed",
        "organization_not_found",
        "no_license_pool",
        "session_not_found",
        "ticket_not_found",
        "organization_required",
        "session_quota_exceeded",
        "machine_quota_exceeded",
        "idempotency_key_in_use",
        "session_terminated",
        "idempotency_key_reused",
        "rate_limited",
        "service_unavailable",
    }


def _operation(document, path):
    """The documented operation whose templated path matches `path`."""
    for template, operations in document["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            return operations
    raise AssertionError(f"{path} is not documented")


def check(document, method, path, response):
    """The response's status is documented for the operation, and its body matches the schema."""
    operation = _operation(document, path)[method]
    documented = operation["responses"]
    assert str(response.status_code) in documented, f"{method} {path} answered undocumented {response.status_code}"
    spec = documented[str(response.status_code)]
    media_type = response["Content-Type"].split(";")[0]
    assert media_type in spec["content"], f"{method} {path} answered undocumented {media_type}"
    schema = spec["content"][media_type]["schema"]
    for header in spec.get("headers", {}):
        assert response.has_header(header), f"{method} {path} {response.status_code} lacks {header}"
    if media_type == "application/json":
        OAS31Validator({**schema, "components": document["components"]}).validate(response.json())
    return response


@override_settings(API_RATE_LIMIT=40)
def test_every_operation_answers_as_documented(document, client, member_user, organization, api_key):
    """Success and error answers of every operation match the document's schemas and headers."""
    engine = Engine(client, api_key.raw_key)
    anonymous = Engine(client, None)
    pool = factories.LicensePoolFactory(organization=organization, product="RE", quota=1, machine_quota=1)
    kse = factories.LicensePoolFactory(organization=organization, product="KSE")
    exercised = set()

    def call(method, path, response):
        exercised.add((method, re.sub(r"s_[A-Za-z0-9_\-]+|s_nope", "{session_id}", path)))
        return check(document, method, "/api/v1/" + path, response)

    session_id = call("post", "engine/activate", engine.activate()).json()["session"]["id"]
    ticket = call("post", "engine/activate", engine.activate(queue=True)).json()["queued"]["ticket"]
    call("post", "engine/activate", engine.activate(queue=True, ticket=ticket))
    call("post", "engine/activate", engine.activate(queue=True, ticket="q_unknown"))
    call("post", "engine/activate", engine.activate(queue=True, ticket="nope"))
    refused = [engine.activate()]
    QueueTicket.objects.update(expires_at=Now())
    refused.append(engine.activate(queue=True, ticket=ticket))
    quota_details = OAS31Validator(
        {"$ref": "#/components/schemas/SessionQuotaDetails", "components": document["components"]}
    )
    for response in refused:
        refusal = call("post", "engine/activate", response).json()["error"]
        assert refusal["code"] == "session_quota_exceeded"
        quota_details.validate(refusal["details"])
    assert "waited_seconds" in refusal["details"]
    call("post", "engine/activate", engine.activate(machine_id="a b"))
    call("post", "engine/activate", anonymous.activate())
    call("post", "engine/activate", engine.activate(product="KSE"))
    call("post", "engine/activate", engine.activate(org_id="1"))
    call("post", "engine/activate", engine.activate(machine_id="second"))
    call("post", "engine/activate", engine.get("engine/activate"))
    call("post", "engine/activate", engine.activate(headers={"Idempotency-Key": "i"}))
    call("post", "engine/activate", engine.activate(machine_id="other", headers={"Idempotency-Key": "i"}))
    IdempotencyRecord.objects.create(api_key=api_key, key="busy", request_fingerprint="x" * 64)
    call("post", "engine/activate", engine.activate(headers={"Idempotency-Key": "busy"}))
    kse.expires_at = timezone.now()
    kse.starts_at = kse.expires_at - timezone.timedelta(days=1)
    kse.save()
    factories.LicensedUserFactory(pool=kse, user=member_user)
    call("post", "engine/activate", engine.activate(product="KSE"))

    call("post", f"engine/sessions/{session_id}/heartbeat", engine.post(f"engine/sessions/{session_id}/heartbeat"))
    call("post", "engine/sessions/s_nope/heartbeat", engine.post("engine/sessions/s_nope/heartbeat"))
    call("post", f"engine/sessions/{session_id}/heartbeat", anonymous.post(f"engine/sessions/{session_id}/heartbeat"))
    call("post", f"engine/sessions/{session_id}/release", engine.post(f"engine/sessions/{session_id}/release"))
    call("post", f"engine/sessions/{session_id}/release", engine.post(f"engine/sessions/{session_id}/release"))
    call("post", "engine/sessions/s_nope/release", engine.post("engine/sessions/s_nope/release"))
    call("post", f"engine/sessions/{session_id}/heartbeat", engine.post(f"engine/sessions/{session_id}/heartbeat"))

    call("get", "engine/organizations", engine.get("engine/organizations"))
    call("get", "engine/organizations", anonymous.get("engine/organizations"))
    call("get", "offline-licenses/public-key", client.get("/api/v1/offline-licenses/public-key"))
    call(
        "get",
        "offline-licenses/public-key",
        client.get("/api/v1/offline-licenses/public-key", headers={"Accept": "application/json"}),
    )
    call("get", "openapi.json", client.get("/api/v1/openapi.json"))

    while (response := engine.get("engine/organizations")).status_code != 429:
        assert response.status_code == 200
    call("get", "engine/organizations", response)

    documented = {
        (method, template.removeprefix("/api/v1/"))
        for template, operations in document["paths"].items()
        for method in operations
    }
    assert exercised == documented
    assert pool.sessions.count() == 1


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("Idempotency-Key", "two words"),
        ("Idempotency-Key", "caf\u00e9"),
        ("hostname", "a\x1b[31m"),
        ("engine_version", "\x00"),
        ("ticket", "s_not-a-ticket"),
        ("ticket", "q_" + "x" * 39),
        ("max_wait_seconds", 0),
        ("max_wait_seconds", 86_401),
    ],
)
def test_the_document_refuses_what_the_server_refuses(document, engine, re_pool, where, value):
    """A value the server answers 400 for is invalid by the document too, so generated clients and
    fuzzers agree with the server."""
    operation = document["paths"]["/api/v1/engine/activate"]["post"]
    body = {"product": "RE", "machine_id": "agent-1"}
    if where == "Idempotency-Key":
        schema = next(p["schema"] for p in operation["parameters"] if p["name"] == where)
        instance = value
        response = engine.activate(headers={where: value})
    else:
        schema = {"$ref": "#/components/schemas/ActivateRequest"}
        instance = {**body, where: value}
        response = engine.post("engine/activate", instance)
    assert response.status_code == 400
    assert not OAS31Validator({**schema, "components": document["components"]}).is_valid(instance)
