"""The API's failed-authentication limit per address (API_AUTH_FAILURE_LIMIT) over real HTTP, behind a
proxy as in production: the served portal reads each engine's address from X-Forwarded-For (believed
from this loopback proxy), so one test plays engines at two addresses."""

import json
import urllib.error
import urllib.request
import uuid

import pytest

from tests import factories

from .test_rate_limits import _whole_window  # noqa: F401 (autouse: counts never straddle two windows)

GUESSER_ADDRESS = "198.51.100.23"
OTHER_ADDRESS = "203.0.113.99"


def call(base_url, path, key, address):
    request = urllib.request.Request(
        f"{base_url}/api/v1/{path}",
        headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": address, "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@pytest.mark.django_db(transaction=True)
def test_past_the_failure_limit_an_address_gets_429_while_its_valid_keys_are_served(live_server, settings):
    settings.API_AUTH_FAILURE_LIMIT = 3
    member = factories.MembershipFactory().user
    fleet_key = factories.ApiKeyFactory(user=member).raw_key
    url = live_server.url

    # The fleet behind the guesser's address is working when the guessing starts.
    assert call(url, "engine/organizations", fleet_key, GUESSER_ADDRESS)[0] == 200
    for _ in range(3):
        status, _headers, body = call(url, "engine/organizations", f"kat_{uuid.uuid4().hex}", GUESSER_ADDRESS)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")

    status, headers, body = call(url, "engine/organizations", f"kat_{uuid.uuid4().hex}", GUESSER_ADDRESS)
    assert status == 429
    assert headers["Content-Type"] == "application/json"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["X-Request-ID"]
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["details"] == {"limits": {"auth_failures": {"requests": 3, "seconds": 60}}}
    assert f"Retry after {headers['Retry-After']} seconds" in body["error"]["message"]

    # The address's valid key is still served; another address is not affected at all.
    assert call(url, "engine/organizations", fleet_key, GUESSER_ADDRESS)[0] == 200
    status, _headers, body = call(url, "engine/organizations", f"kat_{uuid.uuid4().hex}", OTHER_ADDRESS)
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
