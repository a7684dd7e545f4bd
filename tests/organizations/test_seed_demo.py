"""seed_demo: the demo ./dev run loads, and data at benchmark sizes."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from licenses.models import LicensePool
from organizations.audit import Action
from organizations.models import AuditEvent, Invitation, Membership, Organization
from sessions_app.models import EngineSession
from tests.usage.test_peak import held_spans, true_peaks

pytestmark = pytest.mark.django_db


def demo_pool():
    return LicensePool.objects.get(organization=Organization.objects.get(name="Demo QA"), product="RE")


def test_the_demo_loads_once_with_an_audit_history():
    """./dev run's demo: the three accounts, members, live and past sessions, and an audit log of the
    portal's kinds of events over the history; a second --once run changes nothing."""
    call_command("seed_demo", "--once", stdout=StringIO())
    organization = Organization.objects.get(name="Demo QA")
    assert Membership.objects.active().filter(organization=organization).count() == 15
    assert Invitation.objects.pending().filter(organization=organization).exists()
    events = AuditEvent.objects.for_org(organization)
    assert events.count() >= 100  # about five a day over the 30 days
    assert {Action.MEMBER_INVITED, Action.INVITATION_ACCEPTED, Action.ACTIVATION_REFUSED} <= set(
        events.values_list("action", flat=True)
    )
    assert events.filter(created_at__lt=timezone.now() - timedelta(days=20)).exists()
    out = StringIO()
    call_command("seed_demo", "--once", stdout=out)
    assert "already loaded" in out.getvalue()
    assert AuditEvent.objects.for_org(organization).count() == events.count()


def test_history_sessions_writes_exactly_that_many_never_more_at_once_than_the_quota():
    """--history-sessions N: exactly N ended sessions in the last --history-days, held at most the
    RE quota at once, as the portal would have allowed."""
    call_command(
        "seed_demo",
        members=5,
        machines=6,
        sessions=2,
        history_days=3,
        history_sessions=500,
        audit_events=40,
        stdout=StringIO(),
    )
    pool = demo_pool()
    now = timezone.now()
    ended = EngineSession.objects.filter(pool=pool, ended_at__isnull=False)
    assert ended.count() == 500
    assert not ended.filter(started_at__lt=now - timedelta(days=3, minutes=1)).exists()
    assert not ended.filter(ended_at__gt=now).exists()
    spans = held_spans(ended, now)
    assert max(true_peaks(spans, [(now - timedelta(days=4), now)])) <= pool.quota
    assert AuditEvent.objects.for_org(pool.organization).count() == 40 + 1  # and the organization's creation


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"history_sessions": -1}, "--history-sessions cannot be negative"),
        ({"audit_events": -1}, "--audit-events cannot be negative"),
        ({"history_sessions": 10, "history_days": 0}, "--history-days"),
        ({"history_sessions": 10, "machines": 0, "sessions": 0}, "--machines"),
    ],
)
def test_bad_sizes_are_refused_in_one_line(options, message):
    with pytest.raises(CommandError) as refusal:
        call_command("seed_demo", stdout=StringIO(), **options)
    assert message in str(refusal.value)
    assert not Organization.objects.exists()
