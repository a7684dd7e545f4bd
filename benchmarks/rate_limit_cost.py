"""What counting a request costs the engine API: microseconds per valid-key count and per failed
authentication, with the local-memory cache (the default) and with Redis (CACHE_URL).

    .venv/bin/python benchmarks/rate_limit_cost.py [--redis redis://127.0.0.1:6379/0] [--calls 20000]

In-process, no database: it calls sessions_app.ratelimit as the engine API does. Redis keys are
written under a prefix of this run's own and deleted at the end; Redis must be on loopback.
Prints the median of 5 batches with the range.
"""

import argparse
import statistics
import time
import uuid
from urllib.parse import urlsplit

import django_env

django_env.setup()

from django.core.cache import caches  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from sessions_app import ratelimit  # noqa: E402

BATCHES = 5


def measure(calls, operation):
    per_call = []
    for _ in range(BATCHES):
        started = time.perf_counter()
        for n in range(calls):
            operation(n)
        per_call.append((time.perf_counter() - started) / calls * 1e6)
    return per_call


def fmt(values):
    return f"{statistics.median(values):7.1f} µs ({min(values):.1f}-{max(values):.1f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="a Redis on loopback ('' to skip)")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per batch (at most 200,000)")
    arguments = parser.parse_args()
    calls = max(100, min(arguments.calls, 200_000))
    prefix = f"katalon-bench-{uuid.uuid4().hex}"
    backends = {"local memory": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": prefix}}
    if arguments.redis:
        if urlsplit(arguments.redis).hostname not in ("127.0.0.1", "localhost", "::1"):
            parser.error("--redis must be on loopback")
        backends["Redis"] = {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": arguments.redis,
            "KEY_PREFIX": prefix,
        }
    # 1,000 keys and addresses, as many as a fleet would bring; limits high enough never to refuse.
    keys = [uuid.uuid4().hex * 2 for _ in range(1000)]
    addresses = [f"10.0.{n // 250}.{n % 250}" for n in range(1000)]
    print(f"{calls:,} calls per batch, median of {BATCHES} batches (min-max)")
    for name, backend in backends.items():
        with override_settings(CACHES={"default": backend}, API_RATE_LIMIT=10**9, API_AUTH_FAILURE_LIMIT=10**9):
            ratelimit.reset()
            valid = measure(calls, lambda n: ratelimit.count_request(keys[n % 1000]))
            failed = measure(calls, lambda n: ratelimit.count_failure(addresses[n % 1000]))
            blocked_check = measure(calls, lambda n: ratelimit.address_blocked(addresses[n % 1000]))
            print(f"\n{name}")
            print(f"  a request with a valid key (count_request)   {fmt(valid)}")
            print(f"  a failed authentication (count_failure)      {fmt(failed)}")
            print(f"  is the address over its limit? (local check) {fmt(blocked_check)}")
            if name == "Redis":
                client = caches["default"]._cache.get_client(write=True)
                stale = list(client.scan_iter(match=f"{prefix}:*", count=1000))
                for start in range(0, len(stale), 1000):
                    client.delete(*stale[start : start + 1000])


if __name__ == "__main__":
    main()
