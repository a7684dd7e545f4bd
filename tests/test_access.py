"""No way in: every URL the portal serves, collected from the URL resolver, answered for each kind of
visitor exactly as the table below says, and never with another organization's data; every
state-changing page refuses a request without a CSRF token.

The table has one row per URL name (per route for the engine API's unnamed ones). A URL added
without a row, or a row left for a URL that is gone, fails `test_every_url_has_a_row`. Each row
says how to build the URL for an object of the home organization and what each role gets:

- anonymous: nobody signed in, no API key;
- member / admin / owner: of the home organization (signed in, or their API key for /api/v1/);
- outsider: the owner of another organization (the rival), asking for the home organization's objects.

Each (URL, role) request runs in a savepoint that is rolled back, so a state-changing request by one
role leaves the next role the same world. Every body (and Location header) is searched for the
values that identify the organization the visitor does not belong to (tests/access_world.py).

The admin site is staff-only: none of the five roles is staff, so every admin URL sends them to the
admin's sign-in page (its sign-in page itself excepted), and a staff superuser gets in. Static
files are served by WhiteNoise before the URL resolver, to anyone: they are the public CSS and
htmx, never data.
"""

import logging
import os
from dataclasses import dataclass, field

import pytest
from django.apps import apps
from django.db import transaction
from django.templatetags.static import static
from django.test import Client
from django.urls import URLResolver, get_resolver, reverse
from django.utils.regex_helper import normalize

from tests import factories
from tests.access_world import ROLES, build_world
from tests.reliability import asserted, failed_so_far, record

# (anonymous, member, admin, owner, outsider)
MEMBER_PAGE = (302, 200, 200, 200, 404)
MANAGER_PAGE = (302, 403, 200, 200, 404)
SIGNED_IN = (302, 200, 200, 200, 200)
PUBLIC = (200, 200, 200, 200, 200)


@dataclass(frozen=True)
class Row:
    method: str
    statuses: tuple  # one per role, in ROLES order
    args: object = None  # world -> URL kwargs (pages) or path (API)
    data: object = field(default_factory=dict)  # world -> POST data, or a dict
    api: bool = False
    # The URL's own token is the credential: whoever holds an invitation link sees whom it invites.
    token_bearer: bool = False

    def expected(self, role):
        return self.statuses[ROLES.index(role)]


def org(world):
    return {"org_id": world.home.organization.public_id}


def re_pool(world):
    return {**org(world), "product": "RE"}


def kse_pool(world):
    return {**org(world), "product": "KSE"}


def endpoint(world):
    return {**org(world), "endpoint_id": world.objects.endpoint.pk}


def member_id(world):
    return {**org(world), "membership_id": world.objects.people["member"].memberships.get().pk}


def invitation_id(world):
    return {**org(world), "invitation_id": world.objects.invitation.pk}


def invitation_token(world):
    return {"token": world.objects.invitation.token}


def session_json(world):
    return {"product": "RE", "machine_id": "matrix-machine", "org_id": world.home.organization.public_id}


ROWS = {
    # organizations
    "home": Row("GET", (302, 302, 302, 302, 302)),
    "org_home": Row("GET", (302, 302, 302, 302, 404), org),
    "members": Row("GET", MEMBER_PAGE, org),
    "members_export": Row("GET", MANAGER_PAGE, org),
    "member_invite": Row("POST", (302, 403, 200, 200, 404), org),
    "ownership_transfer": Row("POST", (302, 403, 403, 200, 404), org),
    "member_change_role": Row("POST", (302, 403, 302, 302, 404), member_id),
    "member_remove": Row("POST", (302, 403, 302, 302, 404), member_id),
    "invitation_resend": Row("POST", (302, 403, 302, 302, 404), invitation_id),
    "invitation_revoke": Row("POST", (302, 403, 302, 302, 404), invitation_id),
    "account": Row("GET", SIGNED_IN),
    "accept_invitation": Row("GET", PUBLIC, invitation_token, token_bearer=True),
    "invitation_password_link": Row("POST", (200, 302, 302, 302, 302), invitation_token, token_bearer=True),
    # django.contrib.auth
    "login": Row("GET", PUBLIC),
    "logout": Row("POST", (302, 302, 302, 302, 302)),
    "password_change": Row("GET", SIGNED_IN),
    "password_change_done": Row("GET", SIGNED_IN),
    "password_reset": Row("GET", PUBLIC),
    "password_reset_done": Row("GET", PUBLIC),
    # A valid reset link (the member's) is its own credential: whoever opens it is sent on to set the
    # password. The member's own sign-in (here, made after the link) invalidates it: 200 says so.
    "password_reset_confirm": Row(
        "GET", (302, 200, 302, 302, 302), lambda w: w.password_reset_args(), token_bearer=True
    ),
    "password_reset_complete": Row("GET", PUBLIC),
    # audit
    "audit_log": Row("GET", MANAGER_PAGE, org),
    "audit_export": Row("GET", MANAGER_PAGE, org),
    # licenses
    "licenses": Row("GET", (302, 302, 302, 302, 404), org),  # on to the first product's page
    "licenses_product": Row("GET", MEMBER_PAGE, re_pool),
    "licenses_assign": Row("GET", MANAGER_PAGE, kse_pool),
    "licenses_grant": Row("POST", (302, 403, 200, 200, 404), kse_pool),
    "licenses_revoke": Row("POST", (302, 403, 200, 200, 404), kse_pool),
    "licenses_end_session": Row(
        "POST", (302, 403, 302, 302, 404), lambda w: {**re_pool(w), "session_id": w.objects.session.public_id}
    ),
    "licenses_remove_from_line": Row(
        "POST", (302, 403, 302, 302, 404), lambda w: {**re_pool(w), "ticket_id": w.objects.ticket.public_id}
    ),
    "licenses_deactivate_machine": Row(
        "POST", (302, 403, 302, 302, 404), lambda w: {**re_pool(w), "machine_pk": w.objects.machine.pk}
    ),
    "licenses_offline_create": Row("POST", (302, 403, 200, 200, 404), re_pool),
    "licenses_offline_download": Row(
        "GET", MANAGER_PAGE, lambda w: {**re_pool(w), "license_id": w.objects.offline.license_id}
    ),
    # usage
    "usage": Row("GET", MEMBER_PAGE, org),
    "usage_export": Row("GET", MEMBER_PAGE, org),
    "my_licenses": Row("GET", SIGNED_IN),
    # The member's own session: only its holder can end it; anyone else is told there is no such session.
    "end_my_session": Row("POST", (302, 302, 302, 302, 302), lambda w: {"session_id": w.objects.session.public_id}),
    # API keys and the command generator: each person's own
    "api_keys": Row("GET", SIGNED_IN),
    "api_key_create": Row("POST", SIGNED_IN),
    "api_key_revoke": Row("POST", (302, 302, 404, 404, 404), lambda w: {"key_id": w.objects.key_objects["member"].pk}),
    "command_generator": Row("GET", SIGNED_IN),
    "command_generator_key": Row("POST", SIGNED_IN),
    # notifications
    "notifications": Row("GET", MANAGER_PAGE, org),
    "notifications_alerts": Row("POST", (302, 403, 302, 302, 404), org),
    "notifications_endpoint_create": Row("POST", (302, 403, 400, 400, 404), org),
    "notifications_endpoint": Row("GET", MANAGER_PAGE, endpoint),
    "notifications_endpoint_update": Row("POST", (302, 403, 400, 400, 404), endpoint),
    "notifications_endpoint_roll": Row("POST", (302, 403, 200, 200, 404), endpoint),
    "notifications_endpoint_enable": Row("POST", (302, 403, 302, 302, 404), endpoint),
    "notifications_endpoint_disable": Row("POST", (302, 403, 302, 302, 404), endpoint),
    "notifications_endpoint_delete": Row("POST", (302, 403, 302, 302, 404), endpoint),
    "notifications_endpoint_test": Row("POST", (302, 403, 302, 302, 404), endpoint),
    "notifications_send_again": Row(
        "POST", (302, 403, 302, 302, 404), lambda w: {**endpoint(w), "delivery_id": w.objects.delivery.pk}
    ),
    # The engine API, by each role's API key. Any member may activate RE; only the holder of a session
    # may heartbeat or release it (anyone else: session_not_found); the rival's owner is not a member.
    "api/v1/engine/activate": Row(
        "POST", (401, 201, 201, 201, 404), lambda w: "engine/activate", session_json, api=True
    ),
    "api/v1/engine/sessions/<str:session_id>/heartbeat": Row(
        "POST",
        (401, 200, 404, 404, 404),
        lambda w: f"engine/sessions/{w.objects.session.public_id}/heartbeat",
        api=True,
    ),
    "api/v1/engine/sessions/<str:session_id>/release": Row(
        "POST", (401, 200, 404, 404, 404), lambda w: f"engine/sessions/{w.objects.session.public_id}/release", api=True
    ),
    "api/v1/engine/organizations": Row("GET", (401, 200, 200, 200, 200), lambda w: "engine/organizations", api=True),
    "api/v1/offline-licenses/public-key": Row("GET", PUBLIC, lambda w: "offline-licenses/public-key", api=True),
    "api/v1/openapi.json": Row("GET", PUBLIC, lambda w: "openapi.json", api=True),
    r"api/v1/^(?P<path>[\s\S]*)$": Row("GET", (404,) * 5, lambda w: "engine/nowhere", api=True),
}


def _walk(patterns, prefix="", namespace=None):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern), pattern.namespace or namespace)
        else:
            yield prefix + str(pattern.pattern), pattern, namespace


def served_urls():
    """{row key: route} for every URL pattern outside the admin site, and the admin site's patterns."""
    urls, admin = {}, []
    for route, pattern, namespace in _walk(get_resolver().url_patterns):
        if namespace == "admin":
            admin.append((route, pattern))
        else:
            urls.setdefault(pattern.name or route, route)
    return urls, admin


def test_every_url_has_a_row():
    """A new URL must say here who may see it; a row for a URL that is gone is stale."""
    urls, admin = served_urls()
    assert admin, "the admin site's URLs were not collected"
    assert set(urls) - set(ROWS) == set(), "URLs without a row in the access matrix"
    assert set(ROWS) - set(urls) == set(), "rows for URLs that are not served"


@pytest.fixture
def world(db):
    return build_world()


@pytest.fixture(scope="module")
def tally(request):
    """Requests made and leaks found across the module, reported once for docs/RELIABILITY.md."""
    counts = {"urls": 0, "requests": 0, "leaks": 0, "csrf_refusals": 0}
    failed_before = failed_so_far(request)
    yield counts
    if counts["urls"]:
        record(
            "access matrix: every URL x {anonymous, member, admin, owner, other organization's owner}",
            urls=counts["urls"],
            roles=len(ROLES),
            requests=counts["requests"],
            unexpected_statuses=0 if counts.get("failed", 0) == 0 else counts["failed"],
            leaks=counts["leaks"],
        )
    if counts["csrf_refusals"]:
        record(
            "CSRF: POST without a token to every page URL",
            refused=counts["csrf_refusals"],
            accepted=asserted(request, failed_before),
        )


def _client(world, role, **kwargs):
    client = Client(**kwargs)
    user = world.user(role)
    if user is not None:
        # A copy: signing in moves last_login, which the world's password-reset token was made from.
        client.force_login(type(user).objects.get(pk=user.pk))
    return client


def _url(world, name, row):
    return reverse(name, kwargs=row.args(world) if row.args else None)


def _call(world, key, row, role):
    """The answer to `role` for this row, inside a savepoint that is rolled back."""
    with transaction.atomic():
        if row.api:
            client = Client()
            headers = {"Authorization": f"Bearer {world.api_key(role)}"} if world.api_key(role) else {}
            path = "/api/v1/" + row.args(world)
            data = row.data(world) if callable(row.data) else row.data
            if row.method == "GET":
                response = client.get(path, headers=headers)
            else:
                response = client.post(path, data=data or {}, content_type="application/json", headers=headers)
        else:
            client = _client(world, role)
            path = _url(world, key, row)
            data = row.data(world) if callable(row.data) else row.data
            response = client.get(path) if row.method == "GET" else client.post(path, data=data)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        transaction.set_rollback(True)
    # What the visitor sent themselves (path and body) may come back to them.
    return f"{path} {data}", response, body.decode("utf-8", "replace")


def _leaks(world, role, sent, response, body):
    """The foreign values in the answer, except those the visitor sent themselves."""
    shown = body + response.headers.get("Location", "")
    return [needle for needle in world.foreign_needles(role) if needle in shown and needle not in sent]


@pytest.mark.parametrize("key", sorted(ROWS))
def test_each_role_gets_the_expected_answer_and_nothing_of_another_organization(world, tally, key):
    row = ROWS[key]
    observed, leaks = {}, {}
    tally["urls"] += 1
    for role in ROLES:
        path, response, body = _call(world, key, row, role)
        tally["requests"] += 1
        observed[role] = response.status_code
        if row.token_bearer and role != "anonymous":
            # Signed in as someone else, the invitation page says whose it is: the link is the credential.
            continue
        found = _leaks(world, role, path, response, body)
        if found:
            leaks[role] = found
    if os.environ.get("ACCESS_MATRIX_SHOW"):
        print(f"\n{key!r}: {tuple(observed[role] for role in ROLES)}")
    tally["leaks"] += sum(len(found) for found in leaks.values())
    if observed != {role: row.expected(role) for role in ROLES}:
        tally["failed"] = tally.get("failed", 0) + 1
    assert observed == {role: row.expected(role) for role in ROLES}
    assert leaks == {}


def _names_an_object(world, row):
    """Whether the row's URL (or API path) names an object beyond the organization."""
    if row.args is None or row.token_bearer:
        return False
    own = row.args(world)
    world.objects = world.rival
    try:
        return row.args(world) != own
    finally:
        world.objects = world.home


def _refers_to_objects(builder):
    """Whether a URL builder reads `world.objects` itself or through another builder."""
    names = builder.__code__.co_names
    return "objects" in names or any(
        callable(globals().get(name)) and hasattr(globals()[name], "__code__") and _refers_to_objects(globals()[name])
        for name in names
        if name != builder.__name__
    )


OBJECT_KEYS = sorted(
    key for key, row in ROWS.items() if row.args is not None and not row.token_bearer and _refers_to_objects(row.args)
)


@pytest.mark.parametrize("key", OBJECT_KEYS)
def test_another_organizations_object_is_not_found_under_ones_own(world, tally, key):
    """The home organization's owner, and its member through the API, naming the rival's object (its
    session, machine, endpoint, delivery, membership...) under the home organization's URL: not found,
    nothing changed, and nothing of the rival shown. This is the scoping of each query to the
    signed-in person's organization, beyond the membership check of the URL's organization."""
    row = ROWS[key]
    assert _names_an_object(world, row)
    role = "member" if row.api else "owner"
    world.objects = world.rival
    before = _snapshot()
    sent, response, body = _call(world, key, row, role)
    tally["requests"] += 1
    # Ending "my" session that is someone else's is refused with a message on the page it goes back to.
    expected = 302 if key == "end_my_session" else 404
    assert response.status_code == expected, f"{sent}: {response.status_code}"
    assert _snapshot() == before
    found = _leaks(world, role, sent, response, body)
    tally["leaks"] += len(found)
    assert found == []


def _admin_paths():
    """Each admin URL with every parameter filled in (the first alternative of a choice)."""
    _urls, admin = served_urls()
    paths = {}
    for route, pattern in admin:
        prefix = route[: len(route) - len(str(pattern.pattern))]
        template, params = normalize(pattern.pattern.regex.pattern)[0]
        paths[pattern.name or route] = "/" + prefix + template % dict.fromkeys(params, "1")
    return paths


def test_the_admin_site_is_for_staff_only(world, tally):
    """Every admin URL sends each of the five roles (none of them staff) to the admin's sign-in page,
    and shows them nothing of either organization; a staff superuser gets in."""
    paths = _admin_paths()
    assert "index" in paths and "login" in paths
    unexpected, leaks = {}, {}
    for role in ROLES:
        client = _client(world, role)
        for name, path in paths.items():
            response = client.get(path)
            tally["requests"] += 1
            body = response.content.decode("utf-8", "replace")
            if name == "login":
                ok = response.status_code == 200
            elif name == "logout":  # the admin's own rule: a non-staff logout goes to the index, then sign-in
                ok = response.status_code == 302 and response["Location"] == paths["index"]
            else:
                ok = response.status_code == 302 and response["Location"].startswith("/admin/login/")
            if not ok:
                unexpected[(role, name)] = response.status_code
            found = _leaks(world, role, path, response, body)
            if found:
                leaks[(role, name)] = found
    tally["urls"] += len(paths)
    tally["leaks"] += len(leaks)
    assert unexpected == {}
    assert leaks == {}
    staff = Client()
    staff.force_login(factories.UserFactory(is_staff=True, is_superuser=True))
    assert staff.get(paths["index"]).status_code == 200


def test_static_files_are_public_and_carry_no_data(client):
    """Static files are served (by WhiteNoise, before any URL pattern) to anyone: CSS and htmx only."""
    response = client.get(static("js/htmx.min.js"))
    assert response.status_code == 200


# CSRF


def _snapshot():
    """Rows per table: a refused request that reached any action would add at least an audit event."""
    return {model._meta.label: model.objects.count() for model in apps.get_models()}


def _csrf_role(row):
    """Who would be allowed to make the request: the owner, or nobody signed in for public forms."""
    return "owner" if row.statuses[ROLES.index("anonymous")] == 302 else "anonymous"


PAGE_KEYS = sorted(key for key, row in ROWS.items() if not row.api)


@pytest.mark.parametrize("key", PAGE_KEYS)
def test_every_page_refuses_a_post_without_a_csrf_token(world, tally, key, caplog):
    """Every page URL, collected from the resolver like the matrix: a POST without the token is a 403
    that changes nothing, and the same POST with the token is not refused for it. (GET-only pages
    refuse the tokenless POST too: the check runs before the view.)"""
    row = ROWS[key]
    role = _csrf_role(row)
    path = _url(world, key, row)
    data = row.data(world) if callable(row.data) else row.data
    caplog.set_level(logging.WARNING, logger="django.security.csrf")

    client = _client(world, role, enforce_csrf_checks=True)
    before = _snapshot()
    refused = client.post(path, data=data)
    assert refused.status_code == 403
    assert any("CSRF" in message for message in caplog.messages), f"{path}: refused, but not for its CSRF token"
    assert _snapshot() == before
    tally["csrf_refusals"] += 1

    caplog.clear()
    client.get(reverse("login"))  # any page with a form sets the token's cookie
    token = client.cookies["csrftoken"].value
    with transaction.atomic():
        accepted = client.post(path, data=data, headers={"X-CSRFToken": token})
        transaction.set_rollback(True)
    assert not any("CSRF" in message for message in caplog.messages), f"{path}: refused with a valid token"
    if row.method == "POST":
        assert accepted.status_code == row.expected(role)


def test_the_engine_api_is_exempt_from_csrf_as_documented(world):
    """The engine API authenticates by its Authorization header alone and ignores cookies (contract:
    "Session cookies are ignored here and CSRF does not apply"), so a browser's cookies can never
    act through it and no token is asked for. A signed-in browser without a key is still refused."""
    client = _client(world, "member", enforce_csrf_checks=True)
    granted = client.post(
        "/api/v1/engine/activate",
        data={"product": "RE", "machine_id": "csrf-free"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {world.api_key('member')}"},
    )
    assert granted.status_code == 201
    cookies_only = client.post(
        "/api/v1/engine/activate", data={"product": "RE", "machine_id": "csrf-free"}, content_type="application/json"
    )
    assert cookies_only.status_code == 401
