"""demo_engines: `./dev run` keeps a few demo engines heartbeating, so the RE tab shows live sessions."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from licenses.models import LicensePool
from sessions_app.models import EngineSession

SMALL_DEMO = {"members": 2, "machines": 4, "sessions": 2, "history_days": 0, "audit_events": 0}


@pytest.fixture
def re_pool(db):
    call_command("seed_demo", stdout=StringIO(), **SMALL_DEMO)
    return LicensePool.objects.get(organization__name="Demo QA", product="RE")


def test_lapsed_demo_sessions_are_replaced_and_live_ones_heartbeat(re_pool):
    """After the demo sat stopped past its leases, a round starts engines on the demo machines, with
    engine versions; the next round extends their leases instead of starting more."""
    EngineSession.objects.filter(pool=re_pool).update(
        last_heartbeat_at=timezone.now() - timedelta(hours=1), lease_expires_at=timezone.now() - timedelta(minutes=55)
    )
    assert not EngineSession.objects.live().filter(pool=re_pool).exists()

    call_command("demo_engines", "--once", "--engines", "3", stdout=StringIO())
    live = list(EngineSession.objects.live().filter(pool=re_pool))
    assert len(live) == 3
    assert len({session.machine_id for session in live}) == 3
    assert all(session.engine_version for session in live)

    EngineSession.objects.filter(pk__in=[s.pk for s in live]).update(
        lease_expires_at=timezone.now() + timedelta(seconds=30)
    )
    out = StringIO()
    call_command("demo_engines", "--once", "--engines", "3", stdout=out)
    assert out.getvalue().strip() == "3 demo engines heartbeating, 0 started."
    renewed = EngineSession.objects.live().filter(pool=re_pool)
    assert renewed.count() == 3
    assert all(s.lease_expires_at > timezone.now() + timedelta(seconds=re_pool.lease_seconds - 30) for s in renewed)


def test_without_demo_data_it_says_so(db):
    """Run on a database without the demo: a one-line message, not a traceback."""
    with pytest.raises(CommandError, match="run seed_demo first"):
        call_command("demo_engines", "--once", stdout=StringIO())
