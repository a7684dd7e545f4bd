"""Pages at size: server time and query count of the members, licenses (KSE and RE), usage and audit
pages for seed_demo's benchmark sizes, against the demo's own size measured in the same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/katalon_bench .venv/bin/python benchmarks/pages.py [--rounds 7]

Three throwaway test databases (test_<name>), one after the other, each filled by seed_demo:

- demo: seed_demo's defaults, what `./dev run` loads: the reference;
- large: seed_demo --members 10000 --machines 10000 --sessions 2000 --history-days 365 (about 1.1
  million ended sessions over the year and 100,000 audit events);
- 1M/30d: seed_demo --members 100 --machines 2000 --sessions 2000 --history-days 30
  --history-sessions 1000000 (the usage page's large case: a million sessions in 30 days, one pool).

After seeding, VACUUM ANALYZE stands in for the autovacuum a running database has had. Each page is
loaded once to warm up (on the usage page that first load also rolls up the finished hours, which
the periodic expire_sessions does in a running installation; its time is printed apart), then
--rounds rounds load every page of every scenario once, interleaved, so that the machine's busy
moments weigh on the reference as on the large data: the figures are the median and min-max of the
time Django takes to answer (the whole request through middleware, view and template, in-process),
and the queries of one more load.
Every page must answer 200 and stay within the target (150 ms) with as many queries as at the
demo's size; the table says where it does not."""

import argparse
import statistics
import sys
import time
from collections import defaultdict
from io import StringIO

import django_env

django_env.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, override_settings, setup_test_environment  # noqa: E402

from organizations.models import Organization, User  # noqa: E402

TARGET_MS = 150
SCENARIOS = {
    "demo": {},
    "large": {"members": 10_000, "machines": 10_000, "sessions": 2_000, "history_days": 365},
    "1M/30d": {
        "members": 100,
        "machines": 2_000,
        "sessions": 2_000,
        "history_days": 30,
        "history_sessions": 1_000_000,
    },
}
PAGES = [
    ("members", "members/", ("demo", "large")),
    ("members, search", "members/?q=member+99", ("demo", "large")),
    ("members, no KSE license", "members/?license=none", ("demo", "large")),
    ("licenses, KSE tab", "licenses/KSE/", ("demo", "large")),
    ("assign licenses", "licenses/KSE/assign/", ("demo", "large")),
    ("assign licenses, search", "licenses/KSE/assign/?q=member+99", ("demo", "large")),
    ("licenses, RE tab", "licenses/RE/", ("demo", "large")),
    ("usage, 30 days", "usage/", ("demo", "large", "1M/30d")),
    ("usage, 12 months", "usage/?range=12m", ("demo", "large", "1M/30d")),
    ("usage, 24 hours", "usage/?range=24h", ("demo", "large", "1M/30d")),
    ("audit log", "audit/", ("demo", "large")),
    ("audit log, one kind", "audit/?action=member.role_changed", ("demo", "large")),
    ("audit log, who contains", "audit/?actor=member-0001", ("demo", "large")),
    ("audit log, page 1000", "audit/?page=1000", ("demo", "large")),
]
# Measure the pages, not static file hashing: serve the source files as the tests do.
PLAIN_STATIC = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}


def load(client, url):
    started = time.perf_counter()
    response = client.get(url)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        sys.exit(f"{url} answered {response.status_code}")
    return elapsed


def use_database(name):
    """Point the default connection at one scenario's database (the next query reconnects)."""
    connection.close()
    connection.settings_dict["NAME"] = name


def build(scenario, sizes, base_name):
    """A test database for the scenario, filled by seed_demo. Returns its name and seeding time."""
    connection.settings_dict["TEST"]["NAME"] = f"test_{base_name}_{scenario.replace('/', '_').lower()}"
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    started = time.perf_counter()
    call_command("seed_demo", stdout=StringIO(), **sizes)
    seeded = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    print(f"{scenario}: seed_demo took {seeded:.1f} s", flush=True)
    return name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="measured loads per page (at least 5)")
    parser.add_argument("--only", choices=list(SCENARIOS), action="append", help="run only these scenarios")
    options = parser.parse_args()
    if options.rounds < 5:
        parser.error("--rounds must be at least 5")
    if connection.vendor != "postgresql":
        sys.exit("Run this on PostgreSQL (set DATABASE_URL): the limits are proven on the production database.")
    setup_test_environment()
    override_settings(STORAGES=PLAIN_STATIC).enable()
    chosen = options.only or list(SCENARIOS)
    if "demo" not in chosen:
        chosen.insert(0, "demo")  # the reference every ratio needs
    base_name = connection.settings_dict["NAME"]
    databases = {}
    try:
        for scenario in chosen:
            databases[scenario] = build(scenario, SCENARIOS[scenario], base_name)
        clients, urls = {}, {}
        for scenario in chosen:
            use_database(databases[scenario])
            organization = Organization.objects.get(name="Demo QA")
            clients[scenario] = Client()
            clients[scenario].force_login(User.objects.get(email="owner@demo.example"))
            for label, path, scenarios in PAGES:
                if scenario in scenarios:
                    urls[scenario, label] = f"/o/{organization.public_id}/{path}"
        # The first load of each page warms it up (on the usage page it also rolls up every finished
        # hour, which expire_sessions does in a running installation). Then round after round each
        # page is loaded once in each scenario, so a busy moment of the machine weighs on the demo
        # and the large data alike and the ratios stay fair.
        first, timings, queries = {}, defaultdict(list), {}
        for round_number in range(options.rounds + 1):
            for scenario in chosen:
                use_database(databases[scenario])
                load(clients[scenario], "/accounts/login/")  # reconnect outside the measurement
                for (owner, label), url in urls.items():
                    if owner != scenario:
                        continue
                    elapsed = load(clients[scenario], url)
                    if round_number == 0:
                        first[scenario, label] = elapsed
                    else:
                        timings[scenario, label].append(elapsed)
        for (scenario, label), url in urls.items():
            use_database(databases[scenario])
            with CaptureQueriesContext(connection) as captured:
                load(clients[scenario], url)
            queries[scenario, label] = len(captured.captured_queries)
    finally:
        for name in databases.values():
            use_database(name)
            connection.creation.destroy_test_db(base_name, verbosity=0)
        use_database(base_name)

    print(f"\nServer time in ms, median (min-max) of {options.rounds} loads after a warm-up; queries per load.")
    print("| page | data | median ms | min-max ms | queries | x demo's time | queries as demo | within 150 ms |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for label, _path, scenarios in PAGES:
        reference = statistics.median(timings["demo", label])
        for scenario in scenarios:
            if (scenario, label) not in timings:
                continue
            values = timings[scenario, label]
            median = statistics.median(values)
            count = queries[scenario, label]
            same = "yes" if count == queries["demo", label] else f"no ({queries['demo', label]})"
            print(
                f"| {label} | {scenario} | {median:.1f} | {min(values):.1f}-{max(values):.1f} | {count} | "
                f"{median / reference:.1f} | {same} | {'yes' if median <= TARGET_MS else 'NO'} |"
            )
    print("\nFirst load of the usage page after seeding (rolls up every finished hour once):")
    for scenario in chosen:
        if (scenario, "usage, 30 days") in first:
            print(f"  {scenario}: {first[scenario, 'usage, 30 days']:.0f} ms")


if __name__ == "__main__":
    main()
