"""The engine API's rate limits, counted in Django's cache: no database write per request.

Two limits, per minute, from settings (0 turns one off):
- API_RATE_LIMIT: requests per API key, counted once the key is known to be valid, or on the hot
  path's heartbeat and release (api._at_once) just before the statement that authenticates the key and
  does the job, so that a request over the limit does nothing; a key that turns out not to be valid is
  then uncounted and counted as a failure of its address instead;
- API_AUTH_FAILURE_LIMIT: failed authentications per client address. Requests with a valid key never
  count against their address, so a fleet behind one NAT or one proxy is limited per key only.

Each counter is one cache entry per fixed one-minute window, incremented and given an expiry in one
round trip. With CACHE_URL pointing at Redis every process and host shares the counters; with the
default local-memory cache each process counts alone, and the limits apply per worker process.

An address over its failure limit is answered 429 before any key it sends is looked up, so guessing
stops there; only keys that authenticated in the current or previous minute (their counters exist)
are still looked up, so live engines behind a NAT keep working beside one misconfigured agent. That
is why, while the failure limit is on, valid keys are counted even with API_RATE_LIMIT=0.

A shared cache that fails never turns into a 5xx: valid keys are served uncounted (failing open, since
a fleet must not stop because the cache did), and failed authentications are counted in this process's
memory instead, so a flood of bad keys is still refused (at the limit per process) and guessing stays
bounded. The shared cache is tried again after CACHE_RETRY_SECONDS, and the outage is logged when it
starts and at most once every LOG_EVERY_SECONDS while it lasts, never per request.
"""

import logging
import math
import time

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
# A counter outlives its window by one more, since "in use" looks at the previous window too.
COUNTER_TTL = 2 * WINDOW_SECONDS + 5
CACHE_RETRY_SECONDS = 5
LOG_EVERY_SECONDS = 60

# This process's own counters: failed authentications while the shared cache is down, the keys seen
# valid meanwhile, and the addresses known to be over their failure limit (so that a flood from one of
# them costs neither a cache round trip nor a database query).
_local = LocMemCache("engine-api-rate-limits", {"TIMEOUT": COUNTER_TTL, "OPTIONS": {"MAX_ENTRIES": 50_000}})
_shared_down_until = 0.0
_outage_logged_at = -math.inf


class Unavailable(Exception):
    """The shared cache did not answer."""


def reset():
    """Forget this process's counters and any cache outage (for tests)."""
    global _shared_down_until, _outage_logged_at
    _local.clear()
    _shared_down_until, _outage_logged_at = 0.0, -math.inf


def _window(now):
    return int(now // WINDOW_SECONDS)


def retry_after(now=None):
    """Seconds until the current window ends, at least 1."""
    now = time.time() if now is None else now
    return max(1, math.ceil(WINDOW_SECONDS - now % WINDOW_SECONDS))


def _increment(cache, key):
    """Add one to `key` (creating it with COUNTER_TTL) and return the new count."""
    if isinstance(cache, RedisCache):
        # Django's RedisCache.incr asks EXISTS before INCR and needs an add() first: three round trips
        # for a new window, two after. INCR and EXPIRE pipelined are one, on the hot path of every request.
        made_key = cache.make_and_validate_key(key)
        pipeline = cache._cache.get_client(made_key, write=True).pipeline(transaction=False)
        pipeline.incr(made_key)
        pipeline.expire(made_key, COUNTER_TTL)
        return pipeline.execute()[0]
    if cache.add(key, 1, COUNTER_TTL):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # it expired between add() and incr()
        cache.add(key, 1, COUNTER_TTL)
        return 1


def _shared(operation):
    """Run `operation` on the shared cache, or raise Unavailable while it is failing."""
    global _shared_down_until, _outage_logged_at
    now = time.monotonic()
    if now < _shared_down_until:
        raise Unavailable
    try:
        return operation(caches["default"])
    except Exception as error:
        # Whatever the backend raises (a refused connection, a timeout, a full server), the answer is
        # the same: count locally for a while instead of failing the request.
        _shared_down_until = now + CACHE_RETRY_SECONDS
        if now - _outage_logged_at >= LOG_EVERY_SECONDS:
            _outage_logged_at = now
            logger.warning(
                "The cache holding the engine API's rate limits does not answer (%s: %s). Valid API keys are "
                "served without counting and failed authentications are counted per process until it does.",
                type(error).__name__,
                error,
            )
        raise Unavailable from error


def _increment_shared(key):
    """Add one to `key` in the shared cache and return the count; None while the cache is down."""
    try:
        return _shared(lambda cache: _increment(cache, key))
    except Unavailable:
        return None


def _key_counter(key_hash, window):
    return f"rl:key:{key_hash[:40]}:{window}"


def _failure_counter(address, window):
    return f"rl:fail:{address}:{window}"


def _blocked_marker(address):
    return f"rl:blocked:{address}"


def address_blocked(address):
    """Seconds to wait when this process knows the address to be over its failure limit, else 0.
    Costs no round trip: the mark lives in this process, set when it counted the failure over the limit."""
    if not settings.API_AUTH_FAILURE_LIMIT:
        return 0
    until = _local.get(_blocked_marker(address))
    now = time.time()
    return max(1, math.ceil(until - now)) if until is not None and until > now else 0


def key_in_use(key_hash):
    """Whether the key authenticated in this or the previous window: one read, of the shared cache, or
    of this process's memory while the shared cache is down."""
    window = _window(time.time())
    keys = [_key_counter(key_hash, window), _key_counter(key_hash, window - 1)]
    try:
        found = _shared(lambda cache: cache.get_many(keys))
    except Unavailable:
        found = _local.get_many(keys)
    return bool(found)


def count_failure(address):
    """Count a failed authentication from `address`. Returns the seconds to wait when this one is over
    the limit (answer 429), else 0 (answer 401)."""
    limit = settings.API_AUTH_FAILURE_LIMIT
    if not limit:
        return 0
    now = time.time()
    key = _failure_counter(address, _window(now))
    count = _increment_shared(key)
    if count is None:
        count = _increment(_local, key)
    if count <= limit:
        return 0
    wait = retry_after(now)
    _local.set(_blocked_marker(address), now + wait, wait)
    return wait


def forget_request(key_hash):
    """Take back count_request() for a key that then turned out not to be valid (the hot path counts
    before the statement that checks the key): its counter must not make it look in use to
    key_in_use(), or a blocked address could keep sending it to the database."""
    key = _key_counter(key_hash, _window(time.time()))
    try:
        _shared(lambda cache: cache.delete(key))
    except Unavailable:
        _local.delete(key)


def count_request(key_hash):
    """Count a request made with a valid key (or, on the hot path, one about to be checked: see above).
    Returns the seconds to wait when it is over the key's limit (answer 429), else 0. With the shared
    cache down the request is served uncounted."""
    limit = settings.API_RATE_LIMIT
    if not limit and not settings.API_AUTH_FAILURE_LIMIT:
        return 0
    now = time.time()
    key = _key_counter(key_hash, _window(now))
    count = _increment_shared(key)
    if count is None:
        # Remembered here only so that key_in_use() still knows this key during the outage.
        _local.set(key, 1, COUNTER_TTL)
        return 0
    return retry_after(now) if limit and count > limit else 0
