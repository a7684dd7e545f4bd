"""Quota under real concurrency: PostgreSQL row locks with one connection per thread."""

import pytest

from licenses import actions
from licenses.errors import SeatQuotaExceeded
from licenses.models import LicensedUser
from organizations.models import AuditEvent
from tests import factories
from tests.concurrency import organization_row_is_free, run_together, split

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_twenty_concurrent_grants_for_three_licenses():
    """Quota 3, twenty members granted at once: three succeed, the rest are refused, nothing else is written."""
    owner = factories.UserFactory()
    organization = factories.OrganizationFactory(owner=owner, name="Acme QA")
    pool = factories.LicensePoolFactory(organization=organization, product="KSE", quota=3)
    members = [factories.MembershipFactory(organization=organization).user for _ in range(20)]

    def grant(member):
        return lambda: actions.grant_licenses(pool=pool, users=[member], actor=owner, ip_address="10.1.1.1")

    results, errors = split(run_together([grant(member) for member in members]))

    assert len(results) == 3
    assert len(errors) == 17
    assert all(isinstance(error, SeatQuotaExceeded) for error in errors), errors
    assert LicensedUser.objects.active().filter(pool=pool).count() == 3
    assert LicensedUser.objects.count() == 3
    assert AuditEvent.objects.filter(action="license.granted").count() == 3


def test_concurrent_offline_licenses_never_exceed_the_quota():
    """Ten offline licenses requested at once for a quota of 4: four are issued."""
    from datetime import timedelta

    from django.utils import timezone

    from licenses.errors import SessionQuotaExceeded
    from licenses.models import OfflineLicense

    owner = factories.UserFactory()
    organization = factories.OrganizationFactory(owner=owner)
    pool = factories.LicensePoolFactory(organization=organization, product="RE", quota=4)
    expires_at = timezone.now() + timedelta(days=3)

    def create(n):
        return lambda: actions.create_offline_license(
            pool=pool, machine_id=f"m-{n}", expires_at=expires_at, actor=owner
        )

    results, errors = split(run_together([create(n) for n in range(10)]))
    assert len(results) == 4
    assert all(isinstance(error, SessionQuotaExceeded) for error in errors), errors
    assert OfflineLicense.objects.count() == 4


def test_a_grant_holds_its_pool_but_not_the_organization():
    """While a grant holds its pool row, the organization row stays free: the project's lock order
    is organization before pools, so a pool holder that also held the organization would deadlock
    with removing a member (organization, then pools)."""
    owner = factories.UserFactory()
    organization = factories.OrganizationFactory(owner=owner)
    pool = factories.LicensePoolFactory(organization=organization, product="KSE", quota=3)
    member = factories.MembershipFactory(organization=organization).user
    seen = []

    def users():
        # Consumed by the action after it has locked the pool.
        seen.append(organization_row_is_free(organization))
        yield member

    actions.grant_licenses(pool=pool, users=users(), actor=owner)

    assert seen == [True]
