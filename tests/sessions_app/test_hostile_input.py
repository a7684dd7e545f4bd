"""Hostile input to the engine API and the pages: oversized bodies, deep JSON, wrong content types,
invalid UTF-8, CR/LF and NUL in headers and fields, huge numbers, unexpected types. Each gets a clear
4xx (the contract's error body on the API, naming what was wrong), never a 5xx, and changes nothing.

Requests go through Django's full stack (middleware included) with the test client, which can send
what a real HTTP server would refuse before Django sees it (CR/LF in a header value, say)."""

import json

import pytest
from django.apps import apps

from sessions_app.api import MAX_BODY_BYTES
from tests import factories
from tests.reliability import asserted, failed_so_far, record

ACTIVATE = "/api/v1/engine/activate"
GOOD = {"product": "RE", "machine_id": "agent-1"}
TRIED = {"api": 0, "pages": 0}


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    failed_before = failed_so_far(request)
    yield
    if TRIED["api"] or TRIED["pages"]:
        record(
            "hostile input to the engine API and the pages",
            api_inputs=TRIED["api"],
            page_inputs=TRIED["pages"],
            server_errors=asserted(request, failed_before),
            changes=asserted(request, failed_before),
        )


def _snapshot():
    return {model._meta.label: model.objects.count() for model in apps.get_models()}


def _post(client, raw, *, content_type="application/json", key, **headers):
    return client.generic(
        "POST", ACTIVATE, raw, content_type=content_type, headers={"Authorization": f"Bearer {key}", **headers}
    )


def _refused(response, field):
    """A 400 invalid_request in the contract's body, naming `field` among the bad fields."""
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["message"]
    fields = body["error"]["details"]["fields"]
    assert field in fields, fields
    assert all(reason for reason in fields[field])
    return fields[field]


def _deep(depth, inner="1"):
    return "[" * depth + inner + "]" * depth


HOSTILE_BODIES = {
    # size
    "over the API's limit": (json.dumps({**GOOD, "hostname": "h" * (MAX_BODY_BYTES + 1)}).encode(), "body"),
    "over Django's upload limit": (json.dumps({**GOOD, "engine_version": "9" * 3_000_000}).encode(), "body"),
    # nesting
    "deep array": (_deep(100_000).encode(), "body"),
    "deep object": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "body"),
    "deep value in an extra field": (
        ('{"product": "RE", "machine_id": "a", "extra": ' + _deep(900) + "}").encode(),
        "body",
    ),
    "deep value in a field": (('{"product": "RE", "machine_id": ' + _deep(3000) + "}").encode(), "body"),
    # encodings
    "invalid UTF-8": (b'{"product": "RE", "machine_id": "\xff\xfe"}', "body"),
    "UTF-16": ('{"product": "RE", "machine_id": "a"}'.encode("utf-16"), "body"),
    "lone surrogate escape": (b'{"product": "RE", "machine_id": "a", "hostname": "\\udc00"}', "hostname"),
    "NUL escape in machine_id": (b'{"product": "RE", "machine_id": "a\\u0000b"}', "machine_id"),
    "NUL escape in org_id": (b'{"product": "RE", "machine_id": "a", "org_id": "\\u0000"}', "org_id"),
    "NUL escape in engine_version": (
        b'{"product": "RE", "machine_id": "a", "engine_version": "1\\u0000"}',
        "engine_version",
    ),
    "raw NUL byte in the body": (b'{"product": "RE", "machine_id": "a\x00"}', "body"),
    "CR/LF in hostname": (b'{"product": "RE", "machine_id": "a", "hostname": "h\\r\\nSet-Cookie: x=1"}', "hostname"),
    "CR/LF in machine_id": (b'{"product": "RE", "machine_id": "a\\r\\nX-Injected: 1"}', "machine_id"),
    # numbers
    "huge integer": (b'{"product": "RE", "machine_id": "a", "max_wait_seconds": 1' + b"0" * 5000 + b"}", "body"),
    "big integer": (
        b'{"product": "RE", "machine_id": "a", "max_wait_seconds": 1' + b"0" * 300 + b"}",
        "max_wait_seconds",
    ),
    "negative wait": (b'{"product": "RE", "machine_id": "a", "max_wait_seconds": -1}', "max_wait_seconds"),
    "float wait": (b'{"product": "RE", "machine_id": "a", "max_wait_seconds": 60.5}', "max_wait_seconds"),
    "overflowing float": (b'{"product": "RE", "machine_id": "a", "max_wait_seconds": 1e999}', "max_wait_seconds"),
    "NaN": (b'{"product": "RE", "machine_id": "a", "max_wait_seconds": NaN}', "body"),
    "Infinity in an extra field": (b'{"product": "RE", "machine_id": "a", "x": -Infinity}', "body"),
    # types per field
    "product as a list": (b'{"product": ["RE"], "machine_id": "a"}', "product"),
    "machine_id as a number": (b'{"product": "RE", "machine_id": 12}', "machine_id"),
    "machine_id as an object": (b'{"product": "RE", "machine_id": {"$ne": null}}', "machine_id"),
    "org_id as a number": (b'{"product": "RE", "machine_id": "a", "org_id": 1310601899}', "org_id"),
    "org_id as an object": (b'{"product": "RE", "machine_id": "a", "org_id": {"id": "x"}}', "org_id"),
    "hostname as a boolean": (b'{"product": "RE", "machine_id": "a", "hostname": true}', "hostname"),
    "engine_version as a number": (b'{"product": "RE", "machine_id": "a", "engine_version": 9.1}', "engine_version"),
    "queue as a string": (b'{"product": "RE", "machine_id": "a", "queue": "true"}', "queue"),
    "ephemeral as a number": (b'{"product": "RE", "machine_id": "a", "ephemeral": 1}', "ephemeral"),
    "release_previous as a list": (
        b'{"product": "RE", "machine_id": "a", "release_previous": [true]}',
        "release_previous",
    ),
    "ticket as a number": (b'{"product": "RE", "machine_id": "a", "ticket": 7}', "ticket"),
    "ticket with SQL": (b'{"product": "RE", "machine_id": "a", "ticket": "q_1\' OR 1=1 --"}', "ticket"),
    "max_wait_seconds as a string": (
        b'{"product": "RE", "machine_id": "a", "max_wait_seconds": "60"}',
        "max_wait_seconds",
    ),
    "max_wait_seconds as a boolean": (
        b'{"product": "RE", "machine_id": "a", "max_wait_seconds": true}',
        "max_wait_seconds",
    ),
    # not an object
    "a bare string": (b'"RE"', "body"),
    "nothing": (b"", "body"),
    "whitespace": (b" \n\t ", "body"),
    "two objects": (b'{"product": "RE", "machine_id": "a"}{"product": "KSE"}', "body"),
    "form-encoded": (b"product=RE&machine_id=a", "body"),
}


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_a_hostile_body_is_a_clear_400_that_changes_nothing(client, api_key, re_pool, name):
    raw, field = HOSTILE_BODIES[name]
    before = _snapshot()
    for extra in ({}, {"Idempotency-Key": f"hostile-{len(raw)}"}):
        _refused(_post(client, raw, key=api_key.raw_key, **extra), field)
        TRIED["api"] += 1
    assert _snapshot() == before


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json-seq",
        "",
    ],
)
def test_a_body_that_is_not_declared_json_is_refused(client, api_key, re_pool, content_type):
    """The contract's bodies are JSON: another declared type is a 400 naming the Content-Type, even
    when the bytes would parse, so that a form post from a browser is never taken for an engine."""
    before = _snapshot()
    response = _post(client, json.dumps(GOOD).encode(), content_type=content_type, key=api_key.raw_key)
    TRIED["api"] += 1
    reasons = _refused(response, "Content-Type")
    assert "application/json" in reasons[0]
    assert _snapshot() == before


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_with_or_without_a_charset_is_accepted(client, api_key, re_pool, content_type):
    response = _post(client, json.dumps(GOOD).encode(), content_type=content_type, key=api_key.raw_key)
    assert response.status_code == 201


@pytest.mark.parametrize(
    "value",
    ["retry-1\r\nSet-Cookie: session=stolen", "retry-1\nX-Injected: 1", "retry\x00-1", "retry 1", "k" * 256, "\u00e9"],
    ids=["crlf", "lf", "nul", "space", "too-long", "non-ascii"],
)
def test_a_hostile_idempotency_key_is_refused_and_never_echoed(client, api_key, re_pool, value):
    before = _snapshot()
    response = _post(client, json.dumps(GOOD).encode(), key=api_key.raw_key, **{"Idempotency-Key": value})
    TRIED["api"] += 1
    _refused(response, "Idempotency-Key")
    assert "Set-Cookie" not in response.headers and "X-Injected" not in response.headers
    assert _snapshot() == before


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Authorization", "Bearer kat_x\r\nX-Injected: 1"),
        ("Authorization", "Bearer \x00"),
        ("Authorization", "Bearer " + "kat_" + "a" * 100_000),
        ("X-Request-ID", "id\r\nSet-Cookie: a=b"),
        ("X-Request-ID", "\x00"),
        ("Accept", "\r\n"),
    ],
)
def test_hostile_headers_get_a_coded_answer_and_are_never_echoed(client, api_key, re_pool, header, value):
    headers = {"Authorization": f"Bearer {api_key.raw_key}", header: value}
    before = _snapshot()
    response = client.generic("POST", ACTIVATE, json.dumps(GOOD), content_type="application/json", headers=headers)
    TRIED["api"] += 1
    assert response.status_code in (201, 401), response.content[:200]
    if response.status_code == 401:
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert _snapshot() == before
    for name, shown in response.items():
        assert "\r" not in shown and "\n" not in shown and "\x00" not in shown, (name, shown)
    assert "X-Injected" not in response.headers and "Set-Cookie" not in response.headers


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/engine/sessions/s_%00/heartbeat",
        "/api/v1/engine/sessions/s_%0d%0aX-Injected:%201/release",
        "/api/v1/engine/sessions/%ff%fe/heartbeat",
        "/api/v1/engine/sessions/" + "s_" + "a" * 10_000 + "/heartbeat",
        "/api/v1/engine/sessions/s_1'%20OR%201=1/release",
    ],
)
def test_a_hostile_session_id_is_not_found(engine, re_pool, path):
    response = engine.client.post(path, content_type="application/json", headers=engine.headers({}))
    TRIED["api"] += 1
    assert response.status_code == 404
    assert response.json()["error"]["code"] in ("session_not_found", "not_found")


# Pages


@pytest.fixture
def owner_world(organization, owner):
    factories.LicensePoolFactory(organization=organization, product="KSE", quota=3)
    factories.LicensePoolFactory(organization=organization, product="RE", quota=3)
    return organization


def _pages(organization):
    org = organization.public_id
    return {
        "invite": f"/o/{org}/members/invite/",
        "grant": f"/o/{org}/licenses/KSE/grant/",
        "offline": f"/o/{org}/licenses/RE/offline/",
        "api key": "/api-keys/new/",
        "endpoint": f"/o/{org}/notifications/endpoints/",
    }


# The fields of the forms above (each form ignores the others'): invite, grant, offline, API key, endpoint.
FIELDS = (
    "emails",
    "email",
    "role",
    "users",
    "machine_id",
    "expires_on",
    "name",
    "organization",
    "expires",
    "url",
    "event_types",
)
HOSTILE_FORMS = {
    "NUL in every field": lambda: {name: "a\x00b" for name in FIELDS},
    "CR/LF in every field": lambda: {name: "x\r\nBcc: victim@example.com" for name in FIELDS},
    "huge numbers": lambda: {"days": "9" * 5000, "expires_in_days": "9" * 5000, "users": "9" * 30, "page": "9" * 5000},
    "invalid UTF-8": lambda: b"email=%ff%fe&name=%c3%28&machine_id=%80",
    "lists where one value is expected": lambda: {
        "email": ["a@example.com", "b@example.com"],
        "role": ["owner", "admin"],
    },
}


@pytest.mark.parametrize("form", HOSTILE_FORMS)
@pytest.mark.parametrize("page", ["invite", "grant", "offline", "api key", "endpoint"])
def test_a_hostile_form_is_refused_with_a_page_and_changes_nothing(owner_client, owner_world, page, form):
    path = _pages(owner_world)[page]
    data = HOSTILE_FORMS[form]()
    before = _snapshot()
    if isinstance(data, bytes):
        response = owner_client.generic("POST", path, data, content_type="application/x-www-form-urlencoded")
    else:
        response = owner_client.post(path, data)
    TRIED["pages"] += 1
    assert response.status_code < 500
    if form == "invalid UTF-8":
        # Decoded with replacement characters, it is ordinary text: an API key may be named so.
        return
    assert response.status_code in (200, 400), response.status_code  # the form again, with its message
    assert b"<form" in response.content
    assert _snapshot() == before


@pytest.mark.parametrize(
    "data",
    [
        {"event_types": "\x00"},
        {"event_types": ["quota_reached\r\n"]},
        {"daily_digest": "x" * 100_000, "event_types": "9" * 5000},
    ],
)
def test_hostile_alert_preferences_are_refused(owner_client, owner_world, data):
    before = _snapshot()
    response = owner_client.post(f"/o/{owner_world.public_id}/notifications/alerts/", data)
    TRIED["pages"] += 1
    assert response.status_code == 400
    assert _snapshot() == before


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("over the upload limit", lambda: {"email": "a" * 3_000_000 + "@example.com"}),
        ("too many fields", lambda: {f"f{i}": "x" for i in range(2000)}),
    ],
)
def test_an_oversized_form_is_a_400_page(owner_client, owner_world, name, make):
    before = _snapshot()
    response = owner_client.post(_pages(owner_world)["invite"], make())
    TRIED["pages"] += 1
    assert response.status_code == 400
    assert _snapshot() == before


@pytest.mark.parametrize(
    "query",
    [
        "?page=%00",
        "?page=99999999999999999999999999",
        "?user=%00&from=%00&to=9999-99-99",
        "?from=0001-01-01T00:00&to=9999-12-31T23:59",
        "?product=%ff&machine=%0d%0a",
        "?action=%00&actor=%00",
    ],
)
@pytest.mark.parametrize("page", ["members", "usage", "usage/sessions.csv", "audit", "audit/events.csv", "licenses/RE"])
def test_hostile_query_strings_never_reach_a_server_error(owner_client, owner_world, page, query):
    response = owner_client.get(f"/o/{owner_world.public_id}/{page}/{query}".replace(".csv/", ".csv"))
    TRIED["pages"] += 1
    assert response.status_code in (200, 400), response.status_code
