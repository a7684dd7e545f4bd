"""The engine client (client/) run as CI runs it, a katalon-license process, against a real portal
served by the test. Nothing is mocked: the portal is the project's own, on the test database.

Every client process a test starts is collected, and the test fails if the API key shows up in any
of their output, so each test also proves that the key is never printed."""

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.servers.basehttp import WSGIServer
from django.test.testcases import LiveServerThread

from tests import factories

CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "client" / "src"
CHILD = Path(__file__).with_name("child.py")
KATALON_LICENSE = Path(sys.executable).with_name("katalon-license")
WAIT_LIMIT = 30  # seconds any one wait in these tests may take before it fails


class SerialWSGIServer(WSGIServer):
    """Handles one request at a time, under `lock`. On SQLite the test database lives in memory
    and the server shares the test's connection, so requests must not overlap each other, nor the
    test's own queries (which take the same lock)."""

    def __init__(self, *args, connections_override=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.connections_override = connections_override
        self.lock = threading.Lock()

    def process_request(self, request, client_address):
        with self.lock:
            super().process_request(request, client_address)


class SerialLiveServerThread(LiveServerThread):
    server_class = SerialWSGIServer


@pytest.fixture
def portal_server(transactional_db):
    from django.db import connections

    shared = {
        connection.alias: connection
        for connection in connections.all()
        if connection.vendor == "sqlite" and connection.is_in_memory_db()
    }
    for connection in shared.values():
        connection.inc_thread_sharing()
    thread = SerialLiveServerThread("127.0.0.1", StaticFilesHandler, connections_override=shared)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait()
    if thread.error:
        raise thread.error
    yield thread
    thread.terminate()
    for connection in shared.values():
        connection.dec_thread_sharing()


@dataclass
class Portal:
    url: str
    raw_key: str
    organization: object
    pool: object
    user: object
    admin: object
    server: object

    def quiet(self):
        """Hold the server between requests, for the test's own queries while clients run."""
        return self.server.httpd.lock


@pytest.fixture
def portal(portal_server):
    """A portal with one organization whose RE pool has 2 licenses and the shortest lease the pool
    allows (30 s, so the client heartbeats every 10 s), and a member with an API key."""
    user = factories.UserFactory(email="engineer@example.com")
    organization = factories.OrganizationFactory(name="Acme QA")
    factories.MembershipFactory(organization=organization, user=user)
    pool = factories.LicensePoolFactory(
        organization=organization, product="RE", quota=2, machine_quota=5, lease_seconds=30
    )
    api_key = factories.ApiKeyFactory(user=user)
    admin = factories.MembershipFactory(organization=organization, role="admin").user
    return Portal(
        url=f"http://127.0.0.1:{portal_server.port}",
        raw_key=api_key.raw_key,
        organization=organization,
        pool=pool,
        user=user,
        admin=admin,
        server=portal_server,
    )


def client_environment(url=None, key=None, **extra):
    environment = {name: value for name, value in os.environ.items() if not name.startswith("KATALON_")}
    if url is not None:
        environment["KATALON_ADMIN_URL"] = url
    if key is not None:
        environment["KATALON_API_KEY"] = key
    environment.update(extra)
    return environment


class ClientProcess:
    """One katalon-license process; its stdout and stderr are read as they come, so a test can wait
    for a line while the process runs."""

    def __init__(self, argv, environment):
        self.argv = argv
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
        )
        self.stdout_lines, self.stderr_lines = [], []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout_lines), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr_lines), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines):
        for line in stream:
            with self._changed:
                lines.append(line)
                self._changed.notify_all()

    @property
    def pid(self):
        return self.process.pid

    @property
    def stdout(self):
        return "".join(self.stdout_lines)

    @property
    def stderr(self):
        return "".join(self.stderr_lines)

    def wait_for_stderr(self, pattern, timeout=WAIT_LIMIT):
        """The first stderr line matching `pattern`, waiting for it to come."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.stderr_lines:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not any(r.is_alive() for r in self._readers)):
                    raise AssertionError(f"no stderr line matched {pattern!r}; stderr was:\n{self.stderr}")
                self._changed.wait(min(remaining, 0.2))

    def finish(self, timeout=WAIT_LIMIT):
        """Wait for the exit; returns the exit code."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"katalon-license did not finish within {timeout}s; stderr:\n{self.stderr}") from None
        for reader in self._readers:
            reader.join(5)
        return self.process.returncode

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Client:
    """Starts katalon-license processes configured for `portal`; checks at the end that none of
    them printed the API key."""

    portal: Portal | None
    tmp_path: Path
    processes: list = field(default_factory=list)
    secrets: list = field(default_factory=list)

    def environment(self, **extra):
        if self.portal is None:
            return client_environment(NOWHERE, OFFLINE_KEY, **extra)
        return client_environment(self.portal.url, self.portal.raw_key, **extra)

    def start(self, *arguments, environment=None, argv0=None):
        argv = [*(argv0 or [str(KATALON_LICENSE)]), *map(str, arguments)]
        process = ClientProcess(argv, environment or self.environment())
        self.processes.append(process)
        return process

    def run(self, *arguments, timeout=WAIT_LIMIT, **options):
        process = self.start(*arguments, **options)
        process.finish(timeout)
        return process

    def child(self, name="child", **options):
        """argv for child.py; returns (argv, report path)."""
        report = self.tmp_path / f"{name}.json"
        argv = [sys.executable, str(CHILD), "--report", str(report)]
        for option, value in options.items():
            flag = "--" + option.replace("_", "-")
            argv += [flag] if value is True else [flag, str(value)]
        return argv, report

    def assert_no_secret_printed(self):
        for process in self.processes:
            process.kill()
            output = process.stdout + process.stderr
            for secret in self.secrets:
                assert secret not in output, f"the API key was printed by {process.argv[1:3]}"


def _client(portal, tmp_path, secrets):
    if not KATALON_LICENSE.exists():
        pytest.fail(f"{KATALON_LICENSE} is missing: ./dev setup installs the client (requirements.txt: -e ./client)")
    katalon = Client(portal, tmp_path, secrets=secrets)
    yield katalon
    katalon.assert_no_secret_printed()


@pytest.fixture
def katalon(portal, tmp_path):
    """Runs katalon-license against `portal` (KATALON_ADMIN_URL and KATALON_API_KEY set)."""
    yield from _client(portal, tmp_path, [portal.raw_key])


NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing answers there


@pytest.fixture
def katalon_without_portal(tmp_path):
    """Runs katalon-license pointed at an address where nothing answers, with a well-formed key: for
    what the client decides alone (a contacted portal would show as retries and exit 75)."""
    yield from _client(None, tmp_path, [OFFLINE_KEY])


OFFLINE_KEY = "kat_" + "o" * 43


def read_report(path, timeout=WAIT_LIMIT):
    """The child's report, once it has written it."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the wrapped command never started ({path.name} missing)")
        time.sleep(0.05)
    return json.loads(path.read_text())
