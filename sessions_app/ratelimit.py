"""Fixed-window request counting shared by every web process through the database.

One statement per hit: an upsert that creates the window's counter or adds one to it and returns
the new count. It works the same on SQLite and PostgreSQL, and concurrent hits on one counter
serialise on its row, so the count is exact across processes and hosts.
"""

import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from .models import RateLimitCounter

# Engines heartbeat once a minute and CI may start hundreds at once; the defaults only stop a
# runaway loop. Override with ENGINE_API_RATE_LIMITS = {"key": (requests, seconds), "address": (...)}.
DEFAULT_LIMITS = {"key": (1200, 60), "address": (3000, 60)}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int


def limit_for(kind):
    return getattr(settings, "ENGINE_API_RATE_LIMITS", {}).get(kind, DEFAULT_LIMITS[kind])


def hit(buckets: dict[str, str]) -> Verdict:
    """Count one request against each bucket (name, at most 100 characters -> kind of limit) in one
    statement, and say whether every limit still allows it."""
    now = time.time()
    windows = {}
    for bucket, kind in buckets.items():
        _, window_seconds = limit_for(kind)
        windows[bucket[:100]] = (kind, int(now // window_seconds * window_seconds), window_seconds)
    table = connection.ops.quote_name(RateLimitCounter._meta.db_table)
    rows = ", ".join(["(%s, %s, 1)"] * len(windows))
    parameters = [value for bucket, (_, start, _) in windows.items() for value in (bucket, start)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (bucket, window_start, count) VALUES {rows} "  # noqa: S608 (names from the model)
            f"ON CONFLICT (bucket, window_start) DO UPDATE SET count = {table}.count + 1 "
            "RETURNING bucket, count",
            parameters,
        )
        counts = dict(cursor.fetchall())
    retry_after = 0
    for bucket, (kind, start, window_seconds) in windows.items():
        if counts[bucket] > limit_for(kind)[0]:
            retry_after = max(retry_after, int(start + window_seconds - now + 0.999), 1)
    return Verdict(retry_after == 0, retry_after)
