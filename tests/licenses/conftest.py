import pytest

from tests import factories


@pytest.fixture
def kse_pool(organization):
    return factories.LicensePoolFactory(organization=organization, product="KSE", quota=3, machine_quota=3)


@pytest.fixture
def re_pool(organization):
    return factories.LicensePoolFactory(organization=organization, product="RE", quota=3, machine_quota=3)


@pytest.fixture
def members(organization):
    """Five members of Acme QA, in the order they joined."""
    return [factories.MembershipFactory(organization=organization).user for _ in range(5)]


@pytest.fixture
def rival_pool(other_organization):
    return factories.LicensePoolFactory(organization=other_organization, product="KSE", quota=3)
