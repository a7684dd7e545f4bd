"""A real webhook receiver on loopback, and the real worker (django-tasks-db's) run in this process."""

import json
import queue
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import pytest
from django_tasks_db.management.commands import db_worker
from standardwebhooks import Webhook

from notifications import actions
from tests import factories


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)

    def verify(self, secret):
        """The payload, verified as any Standard Webhooks receiver would (raises if the signature is wrong)."""
        return Webhook(secret).verify(self.body, self.headers)


class Receiver:
    """An HTTP server on 127.0.0.1 (a free port) that records every request. `answers` holds the
    statuses to answer with, in turn (200 once they run out); a status of None holds the request
    open without answering until `release()`."""

    def __init__(self):
        self.requests = []
        self.answers = queue.SimpleQueue()
        self.holding = threading.Event()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                try:
                    status = receiver.answers.get_nowait()
                except queue.Empty:
                    status = 200
                if status is None:
                    receiver.holding.set()
                    receiver._release.wait(30)
                    return
                location = receiver.locations.get(status)
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(f"answered {status}".encode())

            def log_message(self, *args):
                pass

        self.locations = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/katalon"

    def answer(self, *statuses):
        for status in statuses:
            self.answers.put(status)

    def release(self):
        self._release.set()

    def wait_for(self, count, timeout=15):
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.requests

    def close(self):
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def allow_private(settings):
    """The receiver runs on loopback, which only an operator's WEBHOOK_ALLOW_PRIVATE=true allows."""
    settings.WEBHOOK_ALLOW_PRIVATE = True


def run_worker():
    """django-tasks-db's worker, in this process, until no task is ready (the `db_worker --batch` loop,
    without the signal handlers the command installs). Its connection housekeeping is left out: it
    closes a connection that is inside a transaction, which here is the test's own. The worker as a
    process, housekeeping and all, runs in test_concurrency.py."""
    with mock.patch.object(db_worker, "close_old_connections", lambda: None):
        _worker().run()


def _worker():
    return db_worker.Worker(
        queue_names=["default"],
        interval=0,
        batch=True,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="test-worker",
        excluded_queue_names=[],
    )


@pytest.fixture
def work(django_capture_on_commit_callbacks):
    """Run the worker until nothing is ready, letting the tasks that what it commits enqueues run too
    (the test's transaction never commits, so its on-commit callbacks are run by hand)."""

    def run():
        for _ in range(20):
            with django_capture_on_commit_callbacks(execute=True) as callbacks:
                run_worker()
            if not callbacks:
                return
        raise AssertionError("The worker kept finding new work")

    return run


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """`with committed():` around an action runs what it leaves for after its commit (enqueueing)."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def endpoint_for(organization, owner, allow_private, committed):
    """endpoint_for(url, event_types=()) -> (endpoint, secret), made as the owner would."""

    def make(url, event_types=()):
        with committed():
            return actions.create_endpoint(organization=organization, actor=owner, url=url, event_types=event_types)

    return make


@pytest.fixture
def kse_pool(organization):
    return factories.LicensePoolFactory(organization=organization, product="KSE", quota=3, machine_quota=3)


@pytest.fixture
def re_pool(organization):
    return factories.LicensePoolFactory(organization=organization, product="RE", quota=2, machine_quota=5)
