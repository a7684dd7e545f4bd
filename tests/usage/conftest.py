from datetime import timedelta

import pytest
from django.utils import timezone

from sessions_app.models import EndReason, EngineSession
from tests import factories


@pytest.fixture
def re_pool(organization):
    return factories.LicensePoolFactory(organization=organization, product="RE", quota=3)


@pytest.fixture
def kse_pool(organization):
    return factories.LicensePoolFactory(organization=organization, product="KSE", quota=2)


def ended_session(pool, *, user, machine, started_at, ended_at, reason=EndReason.RELEASED, **fields):
    """An unsaved session of `pool` that held its license over [started_at, ended_at)."""
    return EngineSession(
        pool=pool,
        user=user,
        machine=machine,
        hostname=machine.hostname,
        started_at=started_at,
        last_heartbeat_at=ended_at,
        lease_expires_at=ended_at + timedelta(seconds=pool.lease_seconds),
        ended_at=ended_at,
        end_reason=reason,
        **fields,
    )


def live_session(pool, *, user, machine, started_at, **fields):
    now = timezone.now()
    return EngineSession(
        pool=pool,
        user=user,
        machine=machine,
        hostname=machine.hostname,
        started_at=started_at,
        last_heartbeat_at=now,
        lease_expires_at=now + timedelta(seconds=pool.lease_seconds),
        **fields,
    )
