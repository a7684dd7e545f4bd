"""Seeds a throwaway PostgreSQL cluster for the fault proofs (tests/test_reliability_faults.py), which
cannot reach it through pytest-django. Run as `python -m tests.cluster_seed '{"quota": 10, ...}'` with
DATABASE_URL pointing at it; prints the organization, pool and API keys it made, as JSON."""

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "katalon_admin.settings")
django.setup()

from django.conf import settings  # noqa: E402

# As in the suite (tests/conftest.py): the factories hash a password per person.
settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

from tests import factories  # noqa: E402


def main(spec):
    # Each run is a new process whose factory sequences start again: continue after earlier runs'.
    from organizations.models import Organization, User

    factories.UserFactory.reset_sequence(User.objects.count())
    factories.OrganizationFactory.reset_sequence(Organization.objects.count())
    organization = factories.OrganizationFactory()
    members = [factories.MembershipFactory(organization=organization).user for _ in range(spec.get("members", 1))]
    pool = factories.LicensePoolFactory(
        organization=organization, product="RE", quota=spec["quota"], machine_quota=spec["machine_quota"]
    )
    keys = [factories.ApiKeyFactory(user=member).raw_key for member in members]
    return {"organization": organization.public_id, "pool": pool.pk, "keys": keys}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
