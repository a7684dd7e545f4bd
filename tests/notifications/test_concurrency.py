"""On PostgreSQL, with real processes: two workers (`manage.py db_worker`) and two minute jobs at once
make each event, delivery and mail exactly once; a worker killed in the middle of a delivery loses
nothing."""

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from licenses import actions as license_actions
from notifications import actions, periodic, tasks
from notifications.event_types import EventType
from notifications.models import Event, Mail, Status, WebhookDelivery
from tests import factories
from tests.concurrency import run_together

from .conftest import run_worker

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PROJECT = Path(__file__).resolve().parents[2]


def worker_process(*, batch=True):
    """A real `manage.py db_worker` on the test database, allowed to reach the loopback receiver."""
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "WEBHOOK_ALLOW_PRIVATE": "true"}
    command = [sys.executable, "manage.py", "db_worker", "--no-startup-delay", "--no-reload", "--interval", "0.1"]
    return subprocess.Popen(
        [*command, "--batch"] if batch else command,
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_two_workers_and_two_minute_jobs_make_everything_once(organization, owner, admin_user, receiver, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    endpoint, _ = actions.create_endpoint(organization=organization, actor=owner, url=receiver.url)
    now = timezone.now()
    factories.LicensePoolFactory(organization=organization, product="RE", expires_at=now + timedelta(days=6))
    kse = factories.LicensePoolFactory(
        organization=organization, product="KSE", quota=5, expires_at=now + timedelta(days=200)
    )
    factories.OfflineLicenseFactory(pool=kse, issued_at=now - timedelta(days=20), expires_at=now + timedelta(days=5))
    people = [factories.MembershipFactory(organization=organization).user for _ in range(3)]
    license_actions.grant_licenses(pool=kse, users=people, actor=owner)  # 3 seats + 1 offline: 80% of 5

    reports = run_together([lambda: periodic.run(timezone.now()) for _ in range(2)])
    assert all(isinstance(report, periodic.Report) for report in reports), reports
    assert sorted(report.events for report in reports) == [0, 3]  # one job made them, the other none

    # Every event is also handed out a second time, as a recovering minute job would.
    tasks.enqueue_fan_out(list(Event.objects.values_list("pk", flat=True)))
    workers = [worker_process(), worker_process()]
    for worker in workers:
        assert worker.wait(timeout=60) == 0, worker.stderr.read().decode()
        worker.stderr.close()

    expected = {
        EventType.SEAT_GRANTED: 3,
        EventType.SUBSCRIPTION_EXPIRING: 1,
        EventType.OFFLINE_LICENSE_EXPIRING: 1,
        EventType.QUOTA_WARNING: 1,
    }
    assert {t: Event.objects.filter(type=t).count() for t in expected} == expected
    assert len(receiver.requests) == 6
    assert len({request.headers["webhook-id"] for request in receiver.requests}) == 6
    assert list(WebhookDelivery.objects.values_list("status", "attempts").order_by().distinct()) == [
        (Status.SUCCEEDED, 1)
    ]
    # Mailed by default: subscription expiring and quota warning, to the owner and the admin.
    assert list(Mail.objects.values_list("status", "attempts").order_by().distinct()) == [(Status.SUCCEEDED, 1)]
    assert Mail.objects.count() == 4
    assert WebhookDelivery.objects.filter(endpoint=endpoint).count() == 6


def test_a_worker_killed_mid_delivery_loses_nothing(organization, owner, member_user, receiver, settings):
    """The worker is killed (SIGKILL) while the receiver holds the request open. The delivery stays
    claimed until its claim runs out; then the minute job hands it out again and a worker delivers it,
    with the same webhook-id, so the receiver can tell it is the same event."""
    settings.WEBHOOK_ALLOW_PRIVATE = True
    endpoint, secret = actions.create_endpoint(organization=organization, actor=owner, url=receiver.url)
    kse = factories.LicensePoolFactory(organization=organization, product="KSE")
    receiver.answer(None)  # the first request is held, never answered
    license_actions.grant_licenses(pool=kse, users=[member_user], actor=owner)

    worker = worker_process(batch=False)
    try:
        assert receiver.holding.wait(30), "the worker never reached the receiver"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        worker.stderr.close()
    receiver.release()
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert (delivery.status, delivery.attempts) == (Status.PENDING, 1)
    assert delivery.claimed_until > timezone.now()

    with time_machine.travel(timezone.now() + timedelta(minutes=10), tick=False):
        assert periodic.run(timezone.now()).handed_out_again == 1
        run_worker()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (Status.SUCCEEDED, 2, 200)
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    with time_machine.travel(timezone.now() + timedelta(minutes=10), tick=False):
        assert second.verify(secret)["type"] == "seat.granted"
