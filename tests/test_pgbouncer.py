"""Several app hosts share one PostgreSQL through PgBouncer in transaction-pooling mode (README,
Production): every quota still holds there, and the CSV exports work with server-side cursors off."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from django.db import connection

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from pgbouncer_server import PgBouncer  # noqa: E402

# The PostgreSQL tests that race real connections, and the exports that stream with iterator().
THROUGH_PGBOUNCER = [
    "tests/sessions_app/test_concurrency.py",
    "tests/licenses/test_concurrency.py",
    "tests/organizations/test_concurrency.py",
    "tests/notifications/test_concurrency.py",
    "tests/usage/test_usage_page.py",
    "tests/usage/test_audit_page.py",
    "tests/organizations/test_views.py",
]
# Left out on purpose, each for a reason of the test's own, not the portal's:
NOT_THROUGH_PGBOUNCER = [
    # It proves the export reads through a server-side cursor, which pooling turns off.
    "tests/usage/test_usage_page.py::test_export_streams_over_a_server_side_cursor",
    # It provokes a 503 with a session-level SET lock_timeout. Transaction pooling lends the server
    # connection that took the SET to other clients afterwards (PgBouncer resets nothing between
    # transactions), so the setting would reach the next tests' connections instead of this one's.
    "tests/sessions_app/test_concurrency.py::test_a_retry_after_a_503_is_answered_afresh",
]


@pytest.fixture
def pgbouncer():
    if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
        if IN_CI:
            pytest.fail("CI: pgbouncer is not installed (.ci/run installs it)")
        pytest.skip("needs PgBouncer: apt-get install -y pgbouncer")
    settings = connection.settings_dict
    server = f"postgres://{settings['USER'] or 'postgres'}:{settings['PASSWORD']}@{settings['HOST'] or '127.0.0.1'}"
    with PgBouncer(f"{server}:{settings['PORT'] or 5432}/postgres") as bouncer:
        yield bouncer, server


@pytest.mark.postgres
def test_the_concurrency_tests_pass_through_pgbouncer_in_transaction_pooling(pgbouncer):
    """The suite's PostgreSQL concurrency tests (quotas under racing activations, grants, invitations)
    and the streamed CSV exports pass with the portal connected through PgBouncer."""
    bouncer, server = pgbouncer
    name = f"katalon_pgbouncer_{os.getpid()}"
    environment = {
        **os.environ,
        "DATABASE_URL": bouncer.url(name, disable_server_side_cursors="true"),
        "PYTHONPATH": str(ROOT),
    }
    try:
        result = subprocess.run(
            [
                sys.executable,
                *("-m", "pytest", "-p", "no:cacheprovider", "-q", "--create-db", "--reuse-db"),
                *THROUGH_PGBOUNCER,
                *("-k", "export or concurrency"),
                *(argument for test in NOT_THROUGH_PGBOUNCER for argument in ("--deselect", test)),
            ],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        # --reuse-db leaves the test database for us to drop directly, past PgBouncer's pooled connections.
        admin = psycopg2.connect(f"{server}/postgres")
        admin.autocommit = True
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "test_{name}" WITH (FORCE)')
        admin.close()
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 15, result.stdout[-2000:]
