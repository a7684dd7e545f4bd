"""The minute job: each time-based event once, however often it runs; quota warnings from the day's
peak; digests; and what a crash left behind handed to the worker again."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core import mail
from django.core.management import call_command
from django.utils import timezone

from notifications import actions, periodic
from notifications.event_types import EventType
from notifications.models import Event, Mail, Status, WebhookDelivery
from tests import factories

pytestmark = pytest.mark.django_db

NOON = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)


def run_job(committed):
    with committed():
        return periodic.run(timezone.now())


def types():
    return list(Event.objects.order_by("pk").values_list("type", flat=True))


def test_a_subscription_is_announced_30_7_and_1_days_before_its_end_and_when_it_ends(organization, committed):
    with time_machine.travel(NOON, tick=False) as traveller:
        pool = factories.LicensePoolFactory(
            organization=organization, starts_at=NOON - timedelta(days=300), expires_at=NOON + timedelta(days=40)
        )
        days_left = []
        for _ in range(45):
            run_job(committed)
            run_job(committed)  # a second host in the same minute
            traveller.shift(timedelta(days=1))
        expiring = Event.objects.filter(type=EventType.SUBSCRIPTION_EXPIRING).order_by("pk")
        days_left = [event.data["days_left"] for event in expiring]
    assert days_left == [30, 7, 1]
    assert types().count(EventType.SUBSCRIPTION_ENDED) == 1
    ended = Event.objects.get(type=EventType.SUBSCRIPTION_ENDED)
    assert ended.data["pool"]["expires_at"] == pool.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_pool_bought_close_to_its_end_hears_only_the_nearest_mark(organization, committed):
    with time_machine.travel(NOON, tick=False):
        factories.LicensePoolFactory(organization=organization, expires_at=NOON + timedelta(days=5))
        run_job(committed)
    (event,) = Event.objects.all()
    assert (event.type, event.data["days_left"]) == (EventType.SUBSCRIPTION_EXPIRING, 5)


def test_a_renewal_starts_the_announcements_afresh(organization, owner, committed):
    from licenses.actions import provision_pool

    with time_machine.travel(NOON, tick=False):
        pool = factories.LicensePoolFactory(organization=organization, expires_at=NOON + timedelta(days=20))
        run_job(committed)
        provision_pool(organization=organization, product=pool.product, quota=5, expires_at=NOON + timedelta(days=25))
        run_job(committed)
    assert types() == [EventType.SUBSCRIPTION_EXPIRING, EventType.SUBSCRIPTION_EXPIRING]


def test_an_offline_license_is_announced_a_week_before_it_expires(organization, committed):
    with time_machine.travel(NOON, tick=False) as traveller:
        pool = factories.LicensePoolFactory(organization=organization)
        offline = factories.OfflineLicenseFactory(pool=pool, issued_at=NOON, expires_at=NOON + timedelta(days=20))
        factories.OfflineLicenseFactory(pool=pool, issued_at=NOON, expires_at=NOON + timedelta(days=3))  # short-lived
        run_job(committed)
        assert types() == []
        traveller.shift(timedelta(days=13, hours=1))
        run_job(committed)
        run_job(committed)
    (event,) = Event.objects.filter(type=EventType.OFFLINE_LICENSE_EXPIRING)
    assert event.data["offline_license"]["license_id"] == offline.license_id
    assert event.data["days_left"] == 7


def test_quota_warning_when_the_days_peak_reaches_80_percent(organization, member_user, committed):
    """Quota 5: a peak of 3 sessions is no warning; a peak of 4 (80%), even over by now, is one, once
    a day; the next day starts afresh."""
    with time_machine.travel(NOON, tick=False) as traveller:
        pool = factories.LicensePoolFactory(organization=organization, quota=5, machine_quota=10)

        def session(started, ended):
            now = timezone.now()
            factories.EngineSessionFactory(
                pool=pool,
                user=member_user,
                started_at=now + timedelta(minutes=started),
                ended_at=now + timedelta(minutes=ended),
                end_reason="released",
                lease_expires_at=now + timedelta(minutes=ended + 5),
            )

        for _ in range(3):
            session(-60, -30)
        run_job(committed)
        assert types() == []
        session(-50, -40)  # the fourth at once, at 11:10 to 11:20
        run_job(committed)
        run_job(committed)
        (warning,) = Event.objects.filter(type=EventType.QUOTA_WARNING)
        assert (warning.data["peak"], warning.data["percent"], warning.data["date"]) == (4, 80, "2027-03-10")
        traveller.shift(timedelta(days=1))
        for _ in range(4):
            session(-10, -5)
        run_job(committed)
    assert types().count(EventType.QUOTA_WARNING) == 2


def test_quota_warning_for_kse_counts_licensed_users(organization, committed):
    pool = factories.LicensePoolFactory(organization=organization, product="KSE", quota=5)
    for _ in range(4):
        factories.LicensedUserFactory(pool=pool)
    run_job(committed)
    (warning,) = Event.objects.filter(type=EventType.QUOTA_WARNING)
    assert warning.data["peak"] == 4


def test_the_daily_digest_replaces_single_mails(organization, owner, admin_user, committed, work):
    """The owner takes a digest of seat grants; the admin keeps single mails for the defaults. The day's
    grant is mailed to neither at once; after midnight the owner's digest lists it, once."""
    with committed():
        actions.save_alert_preference(
            organization=organization, user=owner, event_types=[EventType.SEAT_GRANTED], daily_digest=True
        )
    kse = factories.LicensePoolFactory(organization=organization, product="KSE", quota=3)
    with time_machine.travel(NOON, tick=False) as traveller:
        from licenses.actions import grant_licenses

        with committed():
            grant_licenses(pool=kse, users=[admin_user], actor=owner)
        work()
        assert mail.outbox == []
        traveller.move_to(NOON.replace(hour=23, minute=59))
        run_job(committed)
        assert not Mail.objects.exists()
        traveller.move_to(NOON + timedelta(hours=12, minutes=1))
        run_job(committed)
        run_job(committed)
        work()
    (digest,) = mail.outbox
    assert digest.to == [owner.email]
    assert "1 event on 2027-03-10" in digest.subject
    assert admin_user.email in digest.body
    assert f"/o/{organization.public_id}/licenses/KSE/" in digest.body


def test_alerts_go_to_owners_and_admins_who_want_them(
    client, organization, owner, admin_user, member_user, committed, work
):
    """Defaults: quota reached is mailed to the owner and admins (never members), with the figures and
    the link that fixes it; seat grants are not mailed unless chosen."""
    from tests.sessions_app.conftest import Engine

    factories.LicensePoolFactory(organization=organization, product="RE", quota=1, machine_quota=5)
    engine = Engine(client, factories.ApiKeyFactory(user=member_user).raw_key)
    with committed():
        engine.activate(machine_id="a")
        engine.activate(machine_id="b")
    work()
    assert sorted(message.to[0] for message in mail.outbox) == sorted([owner.email, admin_user.email])
    message = mail.outbox[0]
    assert "Runtime Engine online licenses are used up" in message.subject
    assert "Quota: 1" in message.body
    assert "Refused machine: b" in message.body
    assert f"http://127.0.0.1:8000/o/{organization.public_id}/licenses/RE/" in message.body
    assert f"/o/{organization.public_id}/notifications/" in message.body


def test_lost_work_is_handed_to_the_worker_again(
    organization, owner, member_user, receiver, endpoint_for, committed, work
):
    """An event whose enqueueing never happened (the process died at commit) and a delivery whose
    worker died mid-attempt (its claim ran out) are both sent after the job runs."""
    endpoint, _ = endpoint_for(receiver.url)
    kse = factories.LicensePoolFactory(organization=organization, product="KSE", quota=3)
    from licenses.actions import grant_licenses

    grant_licenses(pool=kse, users=[member_user], actor=owner)  # committed() left out: nothing enqueued
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        run_job(committed)
        work()
        assert receiver.requests == []  # too recent to be taken for lost
        traveller.shift(periodic.RECOVERY_AFTER + timedelta(seconds=1))
        run_job(committed)
        work()
    assert len(receiver.requests) == 1
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert delivery.status == Status.SUCCEEDED

    # A worker that claimed a delivery and died: the claim runs out and the attempt is made again.
    now = timezone.now()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=Status.PENDING, claimed_until=now + timedelta(minutes=2), next_attempt_at=now, enqueued_at=now
    )
    with time_machine.travel(now + timedelta(minutes=1), tick=False) as traveller:
        run_job(committed)
        work()
        assert len(receiver.requests) == 1  # still claimed
        traveller.shift(periodic.RECOVERY_AFTER)
        run_job(committed)
        work()
    assert len(receiver.requests) == 2
    assert receiver.requests[0].headers["webhook-id"] == receiver.requests[1].headers["webhook-id"]


def test_old_history_is_pruned_on_the_hour(organization, committed):
    old = timezone.now() - periodic.EVENT_RETENTION - timedelta(days=1)
    Event.objects.create(organization=organization, type=EventType.MEMBER_JOINED, created_at=old, fanned_out_at=old)
    recent = Event.objects.create(organization=organization, type=EventType.MEMBER_JOINED, fanned_out_at=old)
    assert periodic.prune(timezone.now()) == 1
    assert list(Event.objects.all()) == [recent]


def test_the_command_prints_what_it_did(capsys, committed):
    with committed():
        call_command("check_notifications")
    assert capsys.readouterr().out.startswith("Notifications: 0 events, 0 digests")
