"""The engine API's other endpoints, and what every answer carries whatever was sent."""

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tests import factories

from .conftest import Engine


def test_organizations_lists_those_with_a_pool_and_their_products(engine, member_user, re_pool, kse_pool):
    """The person's organizations holding a pool are listed with their products; others are not."""
    no_pool = factories.OrganizationFactory(name="Empty Co")
    factories.MembershipFactory(organization=no_pool, user=member_user)
    factories.LicensePoolFactory(organization=factories.OrganizationFactory(name="Strangers"))
    response = engine.get("engine/organizations")
    assert response.status_code == 200
    assert response.json() == {
        "organizations": [{"id": re_pool.organization.public_id, "name": "Acme QA", "products": ["KSE", "RE"]}]
    }


def test_a_restricted_key_lists_only_its_organization(client, member_user, re_pool, other_organization):
    """A key restricted to one organization only sees that one."""
    factories.MembershipFactory(organization=other_organization, user=member_user)
    factories.LicensePoolFactory(organization=other_organization)
    restricted = Engine(client, factories.ApiKeyFactory(user=member_user, organization=other_organization).raw_key)
    assert [o["name"] for o in restricted.get("engine/organizations").json()["organizations"]] == ["Rival Labs"]


def test_the_public_key_is_served_as_pem_without_a_key(client, db):
    """Anyone may fetch the Ed25519 public key, as PEM by default."""
    response = client.get("/api/v1/offline-licenses/public-key")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-pem-file"
    assert load_pem_public_key(response.content).public_bytes_raw()


def test_the_public_key_is_json_when_asked(client, db):
    """Accept: application/json gets the algorithm and the PEM in JSON."""
    pem = client.get("/api/v1/offline-licenses/public-key").content.decode()
    response = client.get("/api/v1/offline-licenses/public-key", headers={"Accept": "application/json"})
    assert response.json() == {"algorithm": "ed25519", "public_key_pem": pem}


def test_every_answer_carries_a_request_id(engine, re_pool):
    """A sane X-Request-ID is echoed; a missing or hostile one is replaced by a fresh id."""
    assert engine.get("engine/organizations", **{"X-Request-ID": "build-42.step:7"})["X-Request-ID"] == (
        "build-42.step:7"
    )
    generated = engine.get("engine/organizations")["X-Request-ID"]
    assert len(generated) == 32
    hostile = engine.get("engine/organizations", **{"X-Request-ID": "a b<script>"})["X-Request-ID"]
    assert hostile != "a b<script>"
    assert engine.get("nowhere")["X-Request-ID"]
    assert Engine(engine.client, None).activate()["X-Request-ID"]


def test_an_unknown_path_is_a_json_404(engine, db):
    """Unknown paths under /api/v1/ answer the contract's error body, not an HTML page."""
    for path in (
        "nowhere",
        "engine/activate/",
        "engine/sessions//heartbeat",
        "engine/sessions/s_x/explode",
        "v2",
        "engine/sessions/s_x%0A/explode",
        "%0A",
    ):
        response = engine.get(path)
        assert response.status_code == 404, path
        assert response["Content-Type"] == "application/json"
        assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "engine/activate"),
        ("put", "engine/activate"),
        ("delete", "engine/sessions/s_abc/release"),
        ("get", "engine/sessions/s_abc/heartbeat"),
        ("post", "engine/organizations"),
        ("post", "openapi.json"),
        ("patch", "offline-licenses/public-key"),
    ],
)
def test_a_wrong_method_is_a_json_405(client, api_key, method, path):
    """A known path with the wrong method is 405 with Allow and the error body."""
    response = getattr(client, method)("/api/v1/" + path, headers={"Authorization": f"Bearer {api_key.raw_key}"})
    assert response.status_code == 405
    assert response["Allow"]
    assert response.json()["error"]["code"] == "method_not_allowed"


ODD_BODIES = [
    b"{}",
    b'{"product": null, "machine_id": null}',
    b'{"product": "RE", "machine_id": "a", "org_id": ""}',
    b'{"product": "RE", "machine_id": "a", "org_id": "00000000000000000000000000000000000000000000000"}',
    b'{"product": "RE", "machine_id": "a", "hostname": "\\u0000"}',
    b'{"product": "RE", "machine_id": "a", "hostname": "\\ud800"}',
    b'{"product": "RE", "machine_id": "a", "extra": {"deep": [1, 2, {"x": null}]}}',
    b'{"product": "RE", "machine_id": "' + b"a" * 100_000 + b'"}',
    b'{"product": ["RE"], "machine_id": {"a": 1}, "release_previous": [], "ephemeral": {}}',
    b'{"product": "RE", "machine_id": "a", "release_previous": null, "ephemeral": false}',
    b'{"product": "RE", "machine_id": 1e999}',
    b'{"product": "RE", "product": "KSE", "machine_id": "a"}',
    b"\x00\x01\x02",
    '{"product": "RE", "machine_id": "caf\u00e9"}'.encode(),
]


@pytest.mark.parametrize("raw_body", ODD_BODIES)
def test_no_body_produces_a_server_error(client, api_key, re_pool, raw_body):
    """Whatever the body, the answer is a coded 2xx or 4xx with the error body shape."""
    response = client.post(
        "/api/v1/engine/activate",
        data=raw_body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {api_key.raw_key}", "Idempotency-Key": "fuzz"},
    )
    assert response.status_code < 500
    if response.status_code >= 400:
        assert response.json()["error"]["code"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer kat_" + "\u00e9" * 43},
        {"Authorization": "Bearer " + "kat_" + "x" * 10_000},
        {"Idempotency-Key": "\u00e9t\u00e9"},
        {"Idempotency-Key": ""},
        {"X-Request-ID": "x" * 10_000},
        {"Accept": "application/json;q=nonsense, */*"},
        {"Content-Type": "text/plain"},
    ],
)
def test_no_header_produces_a_server_error(client, api_key, re_pool, headers):
    """Odd headers are refused or ignored, never a 5xx."""
    merged = {"Authorization": f"Bearer {api_key.raw_key}", **headers}
    response = client.post(
        "/api/v1/engine/activate",
        data=b'{"product": "RE", "machine_id": "a"}',
        content_type=headers.get("Content-Type", "application/json"),
        headers={k: v for k, v in merged.items() if k != "Content-Type"},
    )
    assert response.status_code < 500
    assert client.get("/api/v1/offline-licenses/public-key", headers=headers).status_code < 500


def test_a_body_over_the_upload_limit_is_a_400(engine, re_pool, settings):
    """A body beyond Django's upload limit is refused as invalid, not a server error."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = engine.post("engine/activate", {"product": "RE", "machine_id": "a", "hostname": "h" * 5000})
    assert response.status_code == 400
    assert "body" in response.json()["error"]["details"]["fields"]


def test_keys_never_reach_the_logs(client, engine, api_key, re_pool, caplog):
    """Neither a good key, nor a revoked one, nor one sent with a bad request appears in any log line."""
    caplog.set_level("DEBUG")
    engine.activate()
    engine.activate(machine_id="bad id")
    engine.get("nowhere")
    api_key.revoked_at = api_key.created_at
    api_key.save()
    engine.activate()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert logged
    assert api_key.raw_key not in logged
    assert api_key.raw_key[12:] not in logged
