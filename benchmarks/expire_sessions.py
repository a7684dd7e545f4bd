"""expire_sessions over 100,000 lapsed sessions: how long it takes, and how much it delays the
activations running at the same time.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/katalon_bench .venv/bin/python benchmarks/expire_sessions.py
        [--lapsed 100000] [--pools 20] [--workers 4] [--rate 40]

In a throwaway test database (test_<name>): --pools organizations, each with an RE pool, a member
and 200 registered machines, and --lapsed sessions whose leases ran out, spread over the pools (one
INSERT ... SELECT generate_series per pool; VACUUM ANALYZE after). Then --workers processes run
--rate activate-and-release cycles a second between them (the engine API's actions, in-process, each
worker its own database connection) on the pools' registered machines, for the whole run:

1. the reference: the load alone, for --reference seconds;
2. the expire_sessions command (in this process, its time without Python's start-up) while the load
   goes on.

Prints expire_sessions' wall time and rate, and activation latency (p50, p99, max) in both windows,
with the ratios of the second to the first. Targets: under 10 s, and no activation delayed by more
than 100 ms (max during minus p50 of the reference)."""

import argparse
import multiprocessing
import statistics
import sys
import time
from io import StringIO

import django_env

django_env.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402

from licenses.models import LicensePool  # noqa: E402
from organizations.models import Membership, Organization, User  # noqa: E402
from sessions_app import actions  # noqa: E402
from sessions_app.models import EngineSession, Machine  # noqa: E402

MACHINES_PER_POOL = 200

INSERT_LAPSED = """
INSERT INTO {table} (public_id, pool_id, machine_id, user_id, hostname, engine_version, started_at,
                     last_heartbeat_at, lease_expires_at, ended_at, end_reason)
SELECT 's_lapsed_' || %(pool)s || '_' || n, %(pool)s, (%(machines)s::bigint[])[1 + n %% %(count)s], %(user)s,
       'agent.ci.example.com', '10.2.0',
       now() - interval '2 hours' - n * interval '10 milliseconds',
       now() - interval '1 hour' - n * interval '10 milliseconds',
       now() - interval '55 minutes' - n * interval '10 milliseconds',
       NULL, ''
FROM generate_series(1, %(sessions)s) AS n
"""


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def build(pools, lapsed):
    """Organizations with an RE pool, a member and registered machines; lapsed sessions spread
    over the pools. Returns, per pool, (organization id, user id, machine ids)."""
    now = timezone.now()
    targets = []
    table = connection.ops.quote_name(EngineSession._meta.db_table)
    for number in range(pools):
        organization = Organization.objects.create(name=f"Expiry bench {number:03d}")
        user = User.objects.create_user(email=f"engine{number}@expiry.example", password=None)
        Membership.objects.create(organization=organization, user=user, role="owner")
        pool = LicensePool.objects.create(
            organization=organization,
            product="RE",
            quota=100_000,
            machine_quota=100_000,
            starts_at=now - timezone.timedelta(days=1),
            expires_at=now + timezone.timedelta(days=365),
        )
        machines = Machine.objects.bulk_create(
            [
                Machine(pool=pool, machine_id=f"agent-{number:03d}-{n:04d}", hostname="agent.ci.example.com", user=user)
                for n in range(MACHINES_PER_POOL)
            ]
        )
        machine_ids = [machine.pk for machine in machines]
        share = lapsed // pools + (1 if number < lapsed % pools else 0)
        with connection.cursor() as cursor:
            cursor.execute(
                INSERT_LAPSED.format(table=table),
                {
                    "pool": pool.pk,
                    "machines": machine_ids,
                    "count": len(machine_ids),
                    "user": user.pk,
                    "sessions": share,
                },
            )
        targets.append((organization.public_id, user.pk, [machine.machine_id for machine in machines]))
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return targets


def load(targets, stop, results, seed, interval):
    """Activate and release on the pools' machines, one cycle every `interval` seconds (a fleet's
    steady traffic, not a flood that would take the CPU from everything else), until `stop` is set;
    send back (start, seconds) of every activation."""
    import random

    connections.close_all()  # a forked child must not share its parent's connection
    generator = random.Random(seed)
    users = {user_id: User.objects.get(pk=user_id) for _org, user_id, _machines in targets}
    timings = []
    next_start = time.perf_counter()
    while not stop.is_set():
        next_start += interval
        time.sleep(max(0.0, next_start - time.perf_counter()))
        org_id, user_id, machines = generator.choice(targets)
        started = time.perf_counter()
        activation = actions.activate(
            api_key=None, user=users[user_id], product="RE", machine_id=generator.choice(machines), org_id=org_id
        )
        timings.append((time.time(), time.perf_counter() - started))
        actions.release_session(user=users[user_id], session_id=activation.session.public_id)
    results.put(timings)
    connections.close_all()


def window(timings, start, end):
    return [seconds * 1000 for moment, seconds in timings if start <= moment <= end]


def describe(name, latencies):
    return (
        f"{name:<32} {len(latencies):>6} activations, p50 {statistics.median(latencies):6.1f} ms, "
        f"p99 {percentile(latencies, 0.99):6.1f} ms, max {max(latencies):6.1f} ms"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lapsed", type=int, default=100_000, help="lapsed sessions to expire")
    parser.add_argument("--pools", type=int, default=20, help="organizations, one RE pool each")
    parser.add_argument("--workers", type=int, default=4, help="processes activating and releasing")
    parser.add_argument("--rate", type=float, default=40, help="activate-and-release cycles per second, in all")
    parser.add_argument("--reference", type=float, default=8.0, help="seconds of load alone, before expiring")
    parser.add_argument(
        "--batch", type=int, default=actions.EXPIRE_BATCH, help="lapsed sessions per transaction (to compare sizes)"
    )
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit(
            "Run this on PostgreSQL (set DATABASE_URL): row locks and concurrent connections are what is measured."
        )
    actions.EXPIRE_BATCH = options.batch
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        started = time.perf_counter()
        targets = build(options.pools, options.lapsed)
        lapsed = EngineSession.objects.lapsed().count()
        print(f"{lapsed:,} lapsed sessions in {options.pools} pools, built in {time.perf_counter() - started:.1f} s")
        connections.close_all()  # the workers fork: none may inherit this connection

        context = multiprocessing.get_context("fork")
        stop, results = context.Event(), context.Queue()
        workers = [
            context.Process(target=load, args=(targets, stop, results, seed, options.workers / options.rate))
            for seed in range(options.workers)
        ]
        for worker in workers:
            worker.start()
        reference_start = time.time()
        time.sleep(options.reference)
        reference_end = time.time()
        output = StringIO()
        expire_start = time.time()
        call_command("expire_sessions", stdout=output)
        expire_end = time.time()
        stop.set()
        timings = [timing for _ in workers for timing in results.get()]
        for worker in workers:
            worker.join()

        seconds = expire_end - expire_start
        left = EngineSession.objects.lapsed().count()
        reference = window(timings, reference_start, reference_end)
        during = window(timings, expire_start, expire_end)
        print(
            f"expire_sessions: {seconds:.2f} s ({lapsed / seconds:,.0f} sessions/s, {options.batch} a transaction), "
            f"{left} lapsed left"
        )
        print("  " + output.getvalue().strip().replace("\n", "\n  "))
        print(describe(f"reference ({options.rate:g} cycles/s, alone)", reference))
        print(describe("while expire_sessions runs", during))
        print(
            f"during/reference: p50 x{statistics.median(during) / statistics.median(reference):.2f}, "
            f"p99 x{percentile(during, 0.99) / percentile(reference, 0.99):.2f}; "
            f"longest delay over the reference p50: {max(during) - statistics.median(reference):.1f} ms"
        )
    finally:
        connections.close_all()
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
