"""expire_sessions over 100,000 lapsed sessions: how long it takes, and how much it delays the
activations running at the same time, against the way the portal expired them before.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/katalon_bench .venv/bin/python benchmarks/expire_sessions.py
        [--lapsed 100000] [--pools 20] [--workers 4] [--rate 20] [--runs 3]

In a throwaway test database (test_<name>): --pools organizations, each with an RE pool, a member
and 200 registered machines. --workers processes run --rate activate-and-release cycles a second
between them (the engine API's actions, in-process, each worker its own database connection) on the
pools' registered machines: a fleet's steady traffic, not a flood that would take the two cores from
everything else. Each run fills the pools with --lapsed sessions whose leases ran out (one INSERT
... SELECT generate_series per pool, then VACUUM ANALYZE), lets the load run alone for --reference
seconds, then expires them under the same load, either with the expire_sessions command (in this
process: its time without Python's start-up) or, as the reference, the way the portal did before
(every lapsed lease in one transaction); the two alternate, --runs times each, so that the shared
machine's busy moments fall on both.

Prints per run and as medians (min-max): the seconds, activation latency p50, p99 and max while
expiring, the longest activation less the p50 of the load alone, and how long each batch held its
pool's lock (the longest it can make an activation of that pool wait). Targets: under 10 s, and no
activation delayed by more than 100 ms."""

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass
from io import StringIO

import django_env

django_env.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, connections, transaction  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402

from licenses.models import LicensePool  # noqa: E402
from organizations.models import Membership, Organization, User  # noqa: E402
from sessions_app import actions  # noqa: E402
from sessions_app.models import EndReason, EngineSession, Machine  # noqa: E402

MACHINES_PER_POOL = 200

INSERT_LAPSED = """
INSERT INTO {table} (public_id, pool_id, machine_id, user_id, hostname, engine_version, started_at,
                     last_heartbeat_at, lease_expires_at, ended_at, end_reason)
SELECT 's_lapsed_' || %(run)s || '_' || %(pool)s || '_' || n, %(pool)s,
       (%(machines)s::bigint[])[1 + n %% %(count)s], %(user)s,
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


def build(pools):
    """Organizations with an RE pool, a member and registered machines. Returns, per pool, the
    pool's id, the organization's public id, the user's id and the machines' ids and machine ids."""
    now = timezone.now()
    built = []
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
        built.append((pool.pk, organization.public_id, user.pk, machines))
    return built


def add_lapsed(built, lapsed, run):
    """`lapsed` sessions whose leases ran out, spread over the pools (one INSERT ... SELECT each)."""
    table = connection.ops.quote_name(EngineSession._meta.db_table)
    for number, (pool_id, _org_id, user_id, machines) in enumerate(built):
        share = lapsed // len(built) + (1 if number < lapsed % len(built) else 0)
        with connection.cursor() as cursor:
            cursor.execute(
                INSERT_LAPSED.format(table=table),
                {
                    "run": run,
                    "pool": pool_id,
                    "machines": [machine.pk for machine in machines],
                    "count": len(machines),
                    "user": user_id,
                    "sessions": share,
                },
            )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


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


class TimedBatches:
    """Wraps the command's batch function to time each batch: a batch holds its pool's lock from
    start to commit, so its duration is the longest it can make an activation of that pool wait."""

    def __init__(self):
        self.batch = actions._expire_batch
        self.durations, self.busy = [], 0

    def __call__(self, pool_id, *, wait):
        started = time.perf_counter()
        ended = self.batch(pool_id, wait=wait)
        if ended is None:
            self.busy += 1
        else:
            self.durations.append((time.perf_counter() - started) * 1000)
        return ended


def expire_in_one_transaction():
    """How the portal expired sessions before: every lapsed lease in one transaction (end() over all
    of them). The reference the batched command is compared with, in the same run."""
    with transaction.atomic():
        lapsed = EngineSession.objects.lapsed()
        count = lapsed.count()
        lapsed.end(EndReason.EXPIRED)
    return f"Expired {count} sessions in one transaction."


def expire_in_batches():
    output = StringIO()
    call_command("expire_sessions", stdout=output)
    return output.getvalue()


WAYS = {"batches": expire_in_batches, "one transaction": expire_in_one_transaction}


def run_once(targets, options, seed, expire):
    """The load alone for a while, then `expire` under the same load. Returns its seconds and
    output, the activation latencies of both windows, and the batches' timings."""
    connections.close_all()  # the workers fork: none may inherit this connection
    context = multiprocessing.get_context("fork")
    stop, results = context.Event(), context.Queue()
    workers = [
        context.Process(
            target=load, args=(targets, stop, results, seed * options.workers + n, options.workers / options.rate)
        )
        for n in range(options.workers)
    ]
    for worker in workers:
        worker.start()
    reference_start = time.time()
    time.sleep(options.reference)
    reference_end = time.time()
    timed = actions._expire_batch = TimedBatches()
    expire_start = time.time()
    output = expire()
    expire_end = time.time()
    actions._expire_batch = timed.batch
    stop.set()
    timings = [timing for _ in workers for timing in results.get()]
    for worker in workers:
        worker.join()
    left = EngineSession.objects.lapsed().count()
    if left:
        sys.exit(f"{left} lapsed sessions were left: {output}")
    return Run(
        expire_end - expire_start,
        output,
        window(timings, reference_start, reference_end),
        window(timings, expire_start, expire_end),
        timed.durations,
        timed.busy,
        os.getloadavg()[0],
    )


@dataclass
class Run:
    seconds: float
    output: str
    reference: list
    during: list
    holds: list
    busy: int
    load: float

    @property
    def delay(self):
        """The longest activation while expiring, less the typical one of the load alone."""
        return max(self.during) - statistics.median(self.reference)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lapsed", type=int, default=100_000, help="lapsed sessions to expire")
    parser.add_argument("--pools", type=int, default=20, help="organizations, one RE pool each")
    parser.add_argument("--workers", type=int, default=4, help="processes activating and releasing")
    parser.add_argument("--rate", type=float, default=20, help="activate-and-release cycles per second, in all")
    parser.add_argument("--reference", type=float, default=6.0, help="seconds of load alone, before expiring")
    parser.add_argument("--runs", type=int, default=3, help="runs of each way, alternating")
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
    runs = {way: [] for way in WAYS}
    try:
        built = build(options.pools)
        targets = [(org_id, user_id, [m.machine_id for m in machines]) for _pool, org_id, user_id, machines in built]
        seed = 0
        for number in range(options.runs):
            for way, expire in WAYS.items():
                add_lapsed(built, options.lapsed, seed)
                run = run_once(targets, options, seed, expire)
                seed += 1
                runs[way].append(run)
                print(
                    f"run {number + 1}, {way}: {options.lapsed:,} lapsed in {options.pools} pools ended in "
                    f"{run.seconds:.2f} s ({options.lapsed / run.seconds:,.0f}/s); load average {run.load:.1f}",
                    flush=True,
                )
                print("  " + run.output.strip().replace("\n", "\n  "))
                print("  " + describe(f"load alone ({options.rate:g} cycles/s)", run.reference))
                print("  " + describe(f"while expiring ({way})", run.during))
                if run.holds:
                    print(
                        f"  {len(run.holds)} batches of {options.batch}, each holding its pool's lock p50 "
                        f"{statistics.median(run.holds):.1f} ms, max {max(run.holds):.1f} ms; "
                        f"{run.busy} times a pool was busy and passed over"
                    )
    finally:
        connections.close_all()
        connection.creation.destroy_test_db(old_name, verbosity=0)

    print(f"\nMedians (min-max) of {options.runs} runs each, alternating; activation latencies in ms.")
    print(
        "| expiring 100,000 lapsed leases | seconds | activation p50 | p99 | max | longest delay over the p50 alone |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for way, done in runs.items():

        def spread(values):
            return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

        print(
            f"| {way} | {spread([r.seconds for r in done])} | {spread([statistics.median(r.during) for r in done])} | "
            f"{spread([percentile(r.during, 0.99) for r in done])} | {spread([max(r.during) for r in done])} | "
            f"{spread([r.delay for r in done])} |"
        )
    alone = [statistics.median(r.reference) for done in runs.values() for r in done]
    print(f"| (the load alone) | | {statistics.median(alone):.1f} ({min(alone):.1f}-{max(alone):.1f}) | | | |")
    holds = [hold for r in runs["batches"] for hold in r.holds]
    print(
        f"A batch held its pool's lock {statistics.median(holds):.1f} ms at the median, "
        f"{percentile(holds, 0.99):.1f} ms at p99, {max(holds):.1f} ms at most."
    )


if __name__ == "__main__":
    main()
