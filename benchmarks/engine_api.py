"""Engine API benchmark: activate-and-release cycles and heartbeats through HTTP, against gunicorn on
PostgreSQL, beside the same work through a minimal Django view and as plain SQL, in one run.

    .venv/bin/python benchmarks/engine_api.py                 # everything, 3 rounds of 10 s each
    .venv/bin/python benchmarks/engine_api.py --pgbouncer     # the server reaches PostgreSQL through PgBouncer
    .venv/bin/python benchmarks/engine_api.py --workers 3 --only activation-orgs --rounds 1

Needs wrk and pgbench (Debian: apt-get install -y wrk postgresql, which brings pgbench) and PostgreSQL at the server
of DATABASE_URL (default postgres://postgres@127.0.0.1:5432). It creates a throwaway database there,
seeds it, serves the portal with gunicorn (the repository's gunicorn.conf.py, default rate limits)
on a free loopback port, loads it with wrk at 16 connections, and removes the server, PgBouncer and
the database when done, also on Ctrl-C. Traffic goes to 127.0.0.1 only.

Scenarios, each run --rounds times, interleaved so that the machine's noise falls on all alike:
- activation-orgs: cycles over 100 organizations (one RE pool each, 100 API keys);
- activation-pool: cycles over one pool (16 API keys);
  each through the engine API, through the reference view (lock the pool row, count live sessions,
  insert one; release = one UPDATE) and as pgbench running the same SQL (the database's ceiling);
- heartbeat: heartbeats over 10,000 live sessions (16 API keys) through the engine API and through
  a reference view doing one indexed SELECT.
All API traffic comes from one address with the default rate limits; the 429 count is printed.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pgbouncer_server import PgBouncer, free_port  # noqa: E402

PY_SPY = str(Path(sys.executable).parent / "py-spy")
SECRET_KEY = "benchmark-only-secret-key-long-enough-to-look-real-0123456789"
SCENARIOS = ["activation-orgs", "activation-pool", "heartbeat"]
ORGANIZATIONS = 100
POOL_KEYS = 16
LIVE_SESSIONS = 10_000


def log(message):
    print(message, flush=True)


# The database


class ThrowawayDatabase:
    def __init__(self, server_url):
        parts = urlsplit(server_url)
        self.name = f"katalon_bench_engine_{os.getpid()}"
        self.admin_url = urlunsplit(parts._replace(path="/postgres", query=""))
        self.url = urlunsplit(parts._replace(path=f"/{self.name}", query=""))

    def _admin(self, sql):
        connection = psycopg2.connect(self.admin_url, connect_timeout=5)
        connection.autocommit = True
        try:
            connection.cursor().execute(sql)
        finally:
            connection.close()

    def __enter__(self):
        self._admin(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *exc_info):
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def seed(database_url):
    """Migrate the throwaway database and fill it; returns what the load scripts need."""
    os.environ.update(DATABASE_URL=database_url, SECRET_KEY=SECRET_KEY)
    import django_env

    django_env.setup()
    from django.core.management import call_command
    from django.db import connections
    from django.utils import timezone

    from licenses.models import LicensePool
    from organizations.models import Membership, Organization, User
    from sessions_app.models import ApiKey, EngineSession, Machine, hash_api_key

    call_command("migrate", verbosity=0)
    now = timezone.now()
    far = now + timedelta(days=365)
    pool_terms = {"product": "RE", "quota": 1_000_000, "machine_quota": 1_000_000, "expires_at": far}

    def people(prefix, count):
        users = User.objects.bulk_create(
            [User(email=f"{prefix}{n}@bench.example", name=f"{prefix} {n}", password="!") for n in range(count)]
        )
        raw_keys = [ApiKey.generate() for _ in users]
        ApiKey.objects.bulk_create(
            [
                ApiKey(user=user, name="bench", prefix=raw[:12], key_hash=hash_api_key(raw))
                for user, raw in zip(users, raw_keys, strict=True)
            ]
        )
        return users, raw_keys

    def organization(name, users, **terms):
        org = Organization.objects.create(name=name)
        Membership.objects.bulk_create([Membership(organization=org, user=user) for user in users])
        pool = LicensePool.objects.create(organization=org, **{**pool_terms, **terms})
        # The reference view and pgbench insert sessions on this machine (only the foreign key matters).
        machine = Machine.objects.create(pool=pool, machine_id="reference", user=users[0])
        return org, pool, machine

    # 100 organizations, one member and key each: an activation names its organization (-orgID).
    org_users, org_keys = people("org", ORGANIZATIONS)
    orgs = [organization(f"Org {n:03d}", [user]) for n, user in enumerate(org_users)]
    pool_ids = [pool.pk for _, pool, _ in orgs]
    if pool_ids != list(range(pool_ids[0], pool_ids[0] + len(pool_ids))):
        raise SystemExit("the 100 pools did not get consecutive ids; pgbench needs them")
    orgs_data = {
        "keys": org_keys,
        "targets": [
            {"k": n + 1, "org": org.public_id, "pool": pool.pk, "machine_pk": machine.pk, "user_pk": org_users[n].pk}
            for n, (org, pool, machine) in enumerate(orgs)
        ],
        "pgbench": {"pool0": pool_ids[0], "npools": len(pool_ids), "machine": orgs[0][2].pk, "user": org_users[0].pk},
    }

    # One pool, 16 members with a key each.
    pool_users, pool_keys = people("pool", POOL_KEYS)
    org, pool, machine = organization("One Pool", pool_users)
    pool_data = {
        "keys": pool_keys,
        "targets": [
            {"k": n + 1, "org": org.public_id, "pool": pool.pk, "machine_pk": machine.pk, "user_pk": user.pk}
            for n, user in enumerate(pool_users)
        ],
        "pgbench": {"pool0": pool.pk, "npools": 1, "machine": machine.pk, "user": pool_users[0].pk},
    }

    # 10,000 live sessions on 1,000 machines, 16 members: leases of a day, so none lapses mid-run.
    fleet_users, fleet_keys = people("fleet", POOL_KEYS)
    _, fleet_pool, _ = organization("Heartbeat Fleet", fleet_users, lease_seconds=86_400)
    machines = Machine.objects.bulk_create(
        [Machine(pool=fleet_pool, machine_id=f"agent-{n:04d}", user=fleet_users[n % POOL_KEYS]) for n in range(1000)]
    )
    sessions = EngineSession.objects.bulk_create(
        [
            EngineSession(
                pool=fleet_pool,
                machine=machines[n % len(machines)],
                user=fleet_users[n % POOL_KEYS],
                lease_expires_at=now + timedelta(days=1),
            )
            for n in range(LIVE_SESSIONS)
        ],
        batch_size=2000,
    )
    heartbeat_data = {
        "keys": fleet_keys,
        "sessions": [{"id": s.public_id, "k": n % POOL_KEYS + 1} for n, s in enumerate(sessions)],
    }
    connections.close_all()
    return {"activation-orgs": orgs_data, "activation-pool": pool_data, "heartbeat": heartbeat_data}


def lua_table(value):
    """A Python value as a Lua literal, for the data files engine.lua loads with dofile()."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(str(k))}] = {lua_table(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(lua_table(v) for v in value) + "}"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


# The server


class Gunicorn:
    def __init__(self, database_url, directory, workers=None, worker_class=None, threads=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "gunicorn", "katalon_admin.wsgi",
            "--config", str(ROOT / "gunicorn.conf.py"),
            "--bind", f"127.0.0.1:{self.port}",
        ]  # fmt: skip
        for flag, value in (("--workers", workers), ("--worker-class", worker_class), ("--threads", threads)):
            if value:
                self.command += [flag, str(value)]
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
            "DJANGO_SETTINGS_MODULE": "bench_settings",
            "DATABASE_URL": database_url,
            "SECRET_KEY": SECRET_KEY,
            "DEBUG": "false",
            "SECURE_SSL_REDIRECT": "false",
            "ALLOWED_HOSTS": "127.0.0.1",
        }
        self.log_path = Path(directory) / "gunicorn.log"
        self.process = None

    def __enter__(self):
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/api/v1/openapi.json", timeout=5) as answer,  # nosec B310  # the server this benchmark started, on loopback
            ):
                if answer.status == 200:
                    return self
            time.sleep(0.3)
        self.__exit__(None, None, None)
        raise SystemExit(f"gunicorn did not start:\n{self.log_path.read_text()[-3000:]}")

    def __exit__(self, *exc_info):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


# Load


def run_wrk(url, data_file, scenario, target, duration, connections):
    command = [
        "wrk", "--threads", "2", "--connections", str(connections), "--duration", f"{duration}s",
        "--timeout", "10s", "--latency", "--script", str(HERE / "engine" / "engine.lua"), url,
        "--", str(data_file), scenario, target,
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    result = json.loads(re.search(r"^RESULT (.*)$", output, re.MULTILINE).group(1))
    seconds = result["duration_us"] / 1e6
    statuses = result["statuses"]
    good = statuses.get("200", 0)  # releases, or heartbeats
    return {
        "per_second": good / seconds,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "statuses": statuses,
        "socket_errors": result["socket_errors"],
    }


def run_pgbench(database_url, variables, duration, connections, directory):
    parts = urlsplit(database_url)
    prefix = Path(directory) / f"pgbench-{time.monotonic_ns()}"
    command = [
        "pgbench", "--no-vacuum", "--client", str(connections), "--jobs", "2", "--time", str(duration),
        "--file", str(HERE / "engine" / "cycle.sql"), "--log", f"--log-prefix={prefix}",
        "--host", parts.hostname or "127.0.0.1", "--port", str(parts.port or 5432),
        "--username", parts.username or "postgres", parts.path.lstrip("/"),
    ]  # fmt: skip
    for name, value in variables.items():
        command += ["--define", f"{name}={value}"]
    env = {**os.environ, "PGPASSWORD": parts.password or ""}
    output = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, env=env)
    if output.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{output.stdout}\n{output.stderr}")
    latencies = []
    for log_file in Path(directory).glob(f"{prefix.name}*"):
        latencies += [int(line.split()[2]) for line in log_file.read_text().splitlines() if line]
        log_file.unlink()
    latencies.sort()
    tps = float(re.search(r"tps = ([\d.]+)", output.stdout).group(1))
    return {
        "per_second": tps,
        "p50_ms": latencies[len(latencies) // 2] / 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] / 1000,
        "statuses": {},
        "socket_errors": 0,
    }


# Report


def summary(values):
    return statistics.median(values), min(values), max(values)


def fmt(values, digits=0):
    median, low, high = summary(values)
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def report(results, rounds, label):
    log(f"\n== Engine API, {label}: medians of {rounds} rounds (min-max) ==")
    names = {"api": "engine API", "ref": "reference view", "pg": "PostgreSQL (pgbench)"}
    for scenario, by_target in results.items():
        unit = "cycles/s" if scenario.startswith("activation") else "heartbeats/s"
        log(f"\n{scenario}")
        log(f"  {'':<22}{unit:>26}{'p50 ms':>22}{'p99 ms':>22}")
        for target, runs in by_target.items():
            log(
                f"  {names[target]:<22}{fmt([r['per_second'] for r in runs]):>26}"
                f"{fmt([r['p50_ms'] for r in runs], 1):>22}{fmt([r['p99_ms'] for r in runs], 1):>22}"
            )
        rate = {target: statistics.median(r["per_second"] for r in runs) for target, runs in by_target.items()}
        ratios = [f"API/reference {rate['api'] / rate['ref']:.2f}x"]
        if "pg" in rate:
            ratios += [
                f"reference/PostgreSQL {rate['ref'] / rate['pg']:.2f}x",
                f"API/PostgreSQL {rate['api'] / rate['pg']:.2f}x",
            ]
        log("  ratios of medians: " + ", ".join(ratios))
        statuses = {}
        for run in by_target["api"]:
            for code, count in run["statuses"].items():
                statuses[code] = statuses.get(code, 0) + count
        errors = sum(run["socket_errors"] for runs in by_target.values() for run in runs)
        log(f"  engine API answers by status over all rounds: {json.dumps(statuses, sort_keys=True)}")
        log(f"  429 answers: {statuses.get('429', 0)}; socket errors: {errors}")


def report_sweep(results, rounds, label):
    log(f"\n== gunicorn configurations, engine API only, {label}: medians of {rounds} rounds (min-max) ==")
    log("   (N = N sync workers; NxT = N gthread workers of T threads; +NAME=VALUE = a DATABASE_URL option)")
    for scenario, by_spec in results.items():
        unit = "cycles/s" if scenario.startswith("activation") else "heartbeats/s"
        log(f"\n{scenario}")
        width = max(10, *(len(spec) + 2 for spec in by_spec))
        log(f"  {'config':<{width}}{unit:>26}{'p50 ms':>22}{'p99 ms':>22}{'429s':>8}")
        for spec, runs in by_spec.items():
            too_many = sum(run["statuses"].get("429", 0) for run in runs)
            log(
                f"  {spec:<{width}}{fmt([r['per_second'] for r in runs]):>26}"
                f"{fmt([r['p50_ms'] for r in runs], 1):>22}{fmt([r['p99_ms'] for r in runs], 1):>22}{too_many:>8}"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of every scenario (1 to 10; medians with ranges need 3 or more)"
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run (2 to 60)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (1 to 20)")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only these scenarios")
    parser.add_argument("--pgbouncer", action="store_true", help="the server reaches PostgreSQL through PgBouncer")
    parser.add_argument("--cache-url", help="CACHE_URL for the server (default: per-process memory)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: gunicorn.conf.py's)")
    parser.add_argument("--worker-class", help="gunicorn worker class (default: gunicorn.conf.py's)")
    parser.add_argument("--threads", type=int, help="gunicorn threads per worker (gthread)")
    parser.add_argument(
        "--sweep",
        type=lambda value: [spec for spec in value.split(",") if spec],
        help="compare server configurations instead: e.g. 2,4,2x4,2x4+conn_health_checks=False "
        "(sync workers, or gthread workers x threads; +NAME=VALUE adds a DATABASE_URL option)",
    )
    parser.add_argument(
        "--database-option",
        action="append",
        metavar="NAME=VALUE",
        help="a DATABASE_URL option for the server, e.g. conn_health_checks=False",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="write py-spy flame graphs of the workers during the first round's engine API runs into DIR "
        "(needs py-spy in .venv: .venv/bin/python -m pip install py-spy)",
    )
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    arguments = parser.parse_args()
    rounds = max(1, min(arguments.rounds, 10))
    duration = max(2, min(arguments.duration, 60))
    connections = max(1, min(arguments.connections, 20))  # the database server is shared
    scenarios = arguments.only or SCENARIOS
    if arguments.profile:
        if not Path(PY_SPY).exists():
            parser.error(f"--profile needs py-spy: {sys.executable} -m pip install py-spy")
        arguments.profile.mkdir(parents=True, exist_ok=True)
    for tool in ("wrk", "pgbench"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed: apt-get install -y wrk postgresql (pgbench)")
    if arguments.cache_url:
        host = urlsplit(arguments.cache_url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            parser.error("--cache-url must be on loopback")
        os.environ["CACHE_URL"] = arguments.cache_url
    server_url = os.environ.get("DATABASE_URL", "")
    if not server_url.startswith(("postgres://", "postgresql://")):
        server_url = "postgres://postgres@127.0.0.1:5432/postgres"
    if urlsplit(server_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("this benchmark loads a PostgreSQL server on this machine only (DATABASE_URL on loopback)")

    # SIGTERM (a CI timeout, kill) cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="katalon-bench-"))
        database = stack.enter_context(ThrowawayDatabase(server_url))
        log(f"Seeding {database.name}: {ORGANIZATIONS} organizations, one pool, {LIVE_SESSIONS:,} live sessions…")
        data = seed(database.url)
        data_files = {}
        for scenario, values in data.items():
            data_files[scenario] = Path(directory) / f"{scenario}.lua"
            data_files[scenario].write_text("return " + lua_table(values) + "\n")
        app_database_url = database.url
        label = f"gunicorn on PostgreSQL, {connections} connections"
        if arguments.pgbouncer:
            bouncer = stack.enter_context(PgBouncer(server_url))
            app_database_url = bouncer.url(database.name, disable_server_side_cursors="true")
            label += f", through PgBouncer (transaction pooling, pool size {bouncer.pool_size})"
        if arguments.database_option:
            separator = "&" if "?" in app_database_url else "?"
            app_database_url += separator + "&".join(arguments.database_option)
            label += f", DATABASE_URL options {'&'.join(arguments.database_option)}"
        run = Runner(data, data_files, directory, database.url, app_database_url, duration, connections)
        if arguments.sweep:
            results = run.sweep(arguments.sweep, scenarios, rounds)
            report_sweep(results, rounds, label)
        else:
            server = stack.enter_context(
                Gunicorn(app_database_url, directory, arguments.workers, arguments.worker_class, arguments.threads)
            )
            log(f"Serving at {server.url}: {' '.join(server.command[2:])}")
            results = run.compare(server, scenarios, rounds, arguments.profile)
            report(results, rounds, label)
        log(f"\nMachine: {os.cpu_count()} CPUs; {platform_summary()}; run took {time.monotonic() - started:.0f} s")
        if arguments.json:
            arguments.json.write_text(
                json.dumps({"label": label, "when": datetime.now(UTC).isoformat(), "results": results}, indent=1)
            )


@contextlib.contextmanager
def profile(server, prefix, duration):
    """py-spy flame graphs (SVG) of every gunicorn worker while the block runs, as PREFIX-PID.svg."""
    if prefix is None:
        yield
        return
    workers = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    spies = [
        subprocess.Popen(
            [
                *(PY_SPY, "record", "--pid", pid, "--duration", str(duration), "--rate", "250", "--nonblocking"),
                *("--format", "flamegraph", "--output", f"{prefix}-{pid}.svg"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in workers
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.wait(timeout=duration + 30)
        log(f"  profile: {prefix}-*.svg")


TARGETS = {
    "activation-orgs": ["api", "ref", "pg"],
    "activation-pool": ["api", "ref", "pg"],
    "heartbeat": ["api", "ref"],
}


class Runner:
    def __init__(self, data, data_files, directory, database_url, app_database_url, duration, connections):
        self.data, self.data_files, self.directory = data, data_files, directory
        self.database_url, self.app_database_url = database_url, app_database_url
        self.duration, self.connections = duration, connections

    def load(self, server, scenario, target, duration=None):
        if target == "pg":
            return run_pgbench(
                self.database_url, self.data[scenario]["pgbench"], self.duration, self.connections, self.directory
            )
        kind = "heartbeat" if scenario == "heartbeat" else "cycle"
        return run_wrk(server.url, self.data_files[scenario], kind, target, duration or self.duration, self.connections)

    def warm_up(self, server, scenarios, targets):
        """Open every worker's database connection and run every code path once; not measured."""
        for scenario in scenarios:
            for target in targets:
                self.load(server, scenario, target, duration=2)

    def compare(self, server, scenarios, rounds, profile_dir=None):
        """The engine API beside the reference view and pgbench, scenario by scenario, round by round.
        With `profile_dir`, py-spy samples every worker during the first round's engine API runs."""
        self.warm_up(server, scenarios, ("api", "ref"))
        results = {scenario: {target: [] for target in TARGETS[scenario]} for scenario in scenarios}
        for round_number in range(1, rounds + 1):
            log(f"Round {round_number} of {rounds}…")
            for scenario in scenarios:
                for target in TARGETS[scenario]:
                    profiling = profile_dir and round_number == 1 and target == "api"
                    with profile(server, profile_dir / scenario if profiling else None, self.duration):
                        results[scenario][target].append(self.load(server, scenario, target))
        return results

    def sweep(self, specs, scenarios, rounds):
        """The engine API under several gunicorn configurations, restarted in turn within each round."""
        results = {scenario: {spec: [] for spec in specs} for scenario in scenarios}
        for round_number in range(1, rounds + 1):
            log(f"Round {round_number} of {rounds}…")
            for spec in specs:
                # WORKERS[xTHREADS][+DATABASE_URL option]...: e.g. 2, 2x4, 2x4+conn_health_checks=False
                server_spec, *options = spec.split("+")
                workers, _, threads = server_spec.partition("x")
                worker_class = "gthread" if threads else "sync"
                database_url = self.app_database_url
                if options:
                    database_url += ("&" if "?" in database_url else "?") + "&".join(options)
                with Gunicorn(database_url, self.directory, int(workers), worker_class, threads) as server:
                    self.warm_up(server, scenarios, ("api",))
                    for scenario in scenarios:
                        results[scenario][spec].append(self.load(server, scenario, "api"))
        return results


def platform_summary():
    import platform

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, load average {load}"


if __name__ == "__main__":
    main()
