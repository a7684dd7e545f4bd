"""The engine API's rate limits: per API key, and per address for failed authentications only.

Counted in Django's cache, with the local-memory cache (the default) and with Redis (CACHE_URL), and
never with a database write."""

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sessions_app import ratelimit
from sessions_app.models import EngineSession
from tests import factories
from tests.conftest import IN_CI

from .conftest import Engine

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_HOW = f"needs Redis at {REDIS_URL} (set TEST_REDIS_URL to use another)"


def redis_cache_settings(url, prefix):
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": prefix,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }


@pytest.fixture(params=["locmem", "redis"])
def limiter_cache(request, settings):
    """Rate limits counted in the local-memory cache, then in Redis under a prefix of this test's own,
    so that runs sharing the server (other worktrees, CI) cannot see each other's counters."""
    if request.param == "locmem":
        settings.CACHES = {
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": uuid.uuid4().hex}
        }
        yield request.param
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as error:
        if IN_CI:
            pytest.fail(f"CI: Redis is not reachable at {REDIS_URL}: {error}")
        pytest.skip(REDIS_HOW)
    prefix = f"katalon-test-{uuid.uuid4().hex}"
    settings.CACHES = redis_cache_settings(REDIS_URL, prefix)
    yield request.param
    # Never FLUSHDB a shared server: delete only this test's keys (they would expire in minutes anyway).
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(autouse=True)
def _whole_window():
    """Counters live in one-minute windows: start each test with a few seconds of its window left, so
    that its counts cannot be split over two windows."""
    left = ratelimit.WINDOW_SECONDS - time.time() % ratelimit.WINDOW_SECONDS
    if left < 5:
        time.sleep(left + 0.05)


def error_of(response):
    return response.json()["error"]


def unknown_key():
    return "kat_" + uuid.uuid4().hex + "A" * 11


def assert_rate_limited(response, limit, requests):
    assert response.status_code == 429
    error = error_of(response)
    assert error["code"] == "rate_limited"
    assert error["details"] == {"limits": {limit: {"requests": requests, "seconds": 60}}}
    assert 1 <= int(response["Retry-After"]) <= 60
    assert f"Retry after {response['Retry-After']} seconds" in error["message"]


def test_a_key_is_limited_exactly_at_api_rate_limit(limiter_cache, settings, engine, re_pool):
    """API_RATE_LIMIT requests a minute are served; the next is 429 with Retry-After."""
    settings.API_RATE_LIMIT = 5
    for _ in range(5):
        assert engine.get("engine/organizations").status_code == 200
    assert_rate_limited(engine.get("engine/organizations"), "key", 5)
    # Every endpoint of the key shares its count.
    assert_rate_limited(engine.post("engine/sessions/s_any/heartbeat"), "key", 5)


def test_a_heartbeat_or_release_over_the_limit_changes_nothing(limiter_cache, settings, engine, re_pool):
    """A 429 did nothing: the lease is not extended and the session not ended, although on PostgreSQL
    the one statement that would have done it also authenticates the key (the count comes first)."""
    settings.API_RATE_LIMIT = 2
    session_id = engine.activate().json()["session"]["id"]
    assert engine.post(f"engine/sessions/{session_id}/heartbeat").status_code == 200
    session = EngineSession.objects.get(public_id=session_id)
    assert_rate_limited(engine.post(f"engine/sessions/{session_id}/heartbeat"), "key", 2)
    assert_rate_limited(engine.post(f"engine/sessions/{session_id}/release"), "key", 2)
    after = EngineSession.objects.get(public_id=session_id)
    assert (after.lease_expires_at, after.last_heartbeat_at, after.ended_at) == (
        session.lease_expires_at,
        session.last_heartbeat_at,
        None,
    )


def test_each_key_has_its_own_count(limiter_cache, settings, client, member_user, re_pool):
    """One busy key does not use up another's requests, even from the same address."""
    settings.API_RATE_LIMIT = 2
    first = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    second = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    assert [first.get("engine/organizations").status_code for _ in range(3)] == [200, 200, 429]
    assert [second.get("engine/organizations").status_code for _ in range(2)] == [200, 200]


def test_failed_authentications_are_limited_exactly_at_the_address_limit(limiter_cache, settings, client, re_pool):
    """API_AUTH_FAILURE_LIMIT failures a minute from an address are 401; the next are 429, and are refused
    before the presented key is looked up in the database, so guessing stops there."""
    settings.API_AUTH_FAILURE_LIMIT = 3
    missing, malformed, unknown = Engine(client, None), Engine(client, "not-a-key"), Engine(client, unknown_key())
    for engine in (missing, malformed, unknown):
        assert error_of(engine.get("engine/organizations"))["code"] == "invalid_api_key"
    assert_rate_limited(unknown.get("engine/organizations"), "auth_failures", 3)
    with CaptureQueriesContext(connection) as queries:
        response = Engine(client, unknown_key()).post("engine/activate", {"product": "RE", "machine_id": "m"})
    assert_rate_limited(response, "auth_failures", 3)
    assert len(queries) == 0


def test_a_bad_key_sent_to_the_hot_path_is_refused_unread_once_its_address_is_blocked(
    limiter_cache, settings, client, re_pool
):
    """Heartbeat and release count a key before the statement that checks it; a key that fails is
    uncounted, so once its address is blocked it is refused before any database query, as every
    other failed key is."""
    settings.API_AUTH_FAILURE_LIMIT = 2
    guesser = Engine(client, unknown_key())
    answers = [guesser.post("engine/sessions/s_guess/heartbeat").status_code for _ in range(3)]
    assert answers == [401, 401, 429]
    with CaptureQueriesContext(connection) as queries:
        assert_rate_limited(guesser.post("engine/sessions/s_guess/release"), "auth_failures", 2)
    assert len(queries) == 0


def test_valid_key_traffic_never_counts_against_its_address(limiter_cache, settings, engine, client, re_pool):
    """However many requests valid keys make from one address, its failure allowance is untouched."""
    settings.API_AUTH_FAILURE_LIMIT = 2
    for _ in range(25):
        assert engine.get("engine/organizations").status_code == 200
    guesser = Engine(client, unknown_key())
    assert [guesser.get("engine/organizations").status_code for _ in range(3)] == [401, 401, 429]


def test_an_address_over_its_failure_limit_still_serves_keys_in_use(
    limiter_cache, settings, client, engine, member_user, re_pool
):
    """One misconfigured agent behind a NAT does not stop the fleet: a key that authenticated in the
    last minute or two is still served from that address. A key not seen lately waits for the window."""
    settings.API_AUTH_FAILURE_LIMIT = 2
    assert engine.get("engine/organizations").status_code == 200
    broken = Engine(client, unknown_key())
    assert [broken.get("engine/organizations").status_code for _ in range(3)] == [401, 401, 429]
    session = engine.activate()
    assert session.status_code == 201
    assert engine.post(f"engine/sessions/{session.json()['session']['id']}/heartbeat").status_code == 200
    unused = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    assert_rate_limited(unused.get("engine/organizations"), "auth_failures", 2)


def test_zero_turns_a_limit_off(limiter_cache, settings, engine, client, re_pool):
    """API_RATE_LIMIT=0 and API_AUTH_FAILURE_LIMIT=0 refuse nothing."""
    settings.API_RATE_LIMIT = 0
    settings.API_AUTH_FAILURE_LIMIT = 0
    assert {engine.get("engine/organizations").status_code for _ in range(10)} == {200}
    assert {Engine(client, unknown_key()).get("engine/organizations").status_code for _ in range(10)} == {401}


def test_counting_adds_no_database_query(settings, engine, re_pool):
    """The limits cost no query: a request makes the same queries with them on as with them off."""
    engine.get("engine/organizations")  # the key's last-used time is written once, not per request

    def queries_of_one_request():
        with CaptureQueriesContext(connection) as queries:
            assert engine.get("engine/organizations").status_code == 200
        return [query["sql"] for query in queries]

    settings.API_RATE_LIMIT, settings.API_AUTH_FAILURE_LIMIT = 12_000, 60
    limited = queries_of_one_request()
    settings.API_RATE_LIMIT, settings.API_AUTH_FAILURE_LIMIT = 0, 0
    assert queries_of_one_request() == limited


@pytest.fixture
def cache_down(settings):
    """The rate limits pointed at a Redis that is not there: a loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.CACHES = redis_cache_settings(f"redis://127.0.0.1:{port}/0", "down")


def test_a_cache_that_is_down_serves_valid_keys_and_still_stops_guessing(
    cache_down, settings, engine, client, re_pool, caplog
):
    """Valid keys are served uncounted (failing open) and never see a 5xx; failed authentications are
    counted in the process instead, so a flood of bad keys is still refused with 429. The outage is
    logged once, not per request."""
    settings.API_RATE_LIMIT = 2
    settings.API_AUTH_FAILURE_LIMIT = 3
    with caplog.at_level(logging.WARNING, logger="sessions_app.ratelimit"):
        assert [engine.get("engine/organizations").status_code for _ in range(6)] == [200] * 6
        session = engine.activate()
        assert session.status_code == 201
        assert engine.post(f"engine/sessions/{session.json()['session']['id']}/heartbeat").status_code == 200
        guesser = Engine(client, unknown_key())
        assert [guesser.get("engine/organizations").status_code for _ in range(3)] == [401, 401, 401]
        assert_rate_limited(guesser.get("engine/organizations"), "auth_failures", 3)
        # The fleet's keys, seen valid in this process during the outage, are still served.
        assert engine.get("engine/organizations").status_code == 200
    warnings = [record for record in caplog.records if record.name == "sessions_app.ratelimit"]
    assert len(warnings) == 1
    assert "does not answer" in warnings[0].getMessage()


def test_a_cache_that_comes_back_counts_again(settings, engine, re_pool, monkeypatch):
    """Once the shared cache answers again (it is tried again after a few seconds), keys are counted again."""
    monkeypatch.setattr(ratelimit, "CACHE_RETRY_SECONDS", 0.2)
    settings.API_RATE_LIMIT = 2
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.CACHES = redis_cache_settings(f"redis://127.0.0.1:{port}/0", "down")
    assert engine.get("engine/organizations").status_code == 200  # counted nowhere: the cache is down
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": uuid.uuid4().hex}
    }
    assert engine.get("engine/organizations").status_code == 200  # not tried yet: still uncounted
    time.sleep(0.25)
    assert [engine.get("engine/organizations").status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize(("name", "value"), [("API_RATE_LIMIT", "-1"), ("API_AUTH_FAILURE_LIMIT", "many")])
def test_a_bad_limit_in_the_environment_is_refused_at_start(name, value):
    """A negative or non-numeric limit stops the portal from starting, with the variable named."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", "import katalon_admin.settings"],
        cwd=root,
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"{name} must be 0 (off) or a positive number of requests per minute" in result.stderr
