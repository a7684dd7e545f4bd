"""Writes to organizations and memberships. Each action is one transaction that locks the
organization row first, so concurrent changes to one organization queue instead of racing,
and writes its audit event inside that transaction."""

from django.contrib.auth import get_user_model
from django.db import transaction

from .audit import Action, record
from .models import Membership, Organization, Role


@transaction.atomic
def create_organization(*, name, owner, actor=None, ip_address=None):
    """A new organization with `owner` as its owner."""
    organization = Organization.objects.create(name=name)
    Membership.objects.create(organization=organization, user=owner, role=Role.OWNER)
    record(
        organization=organization,
        actor=actor or owner,
        action=Action.ORGANIZATION_CREATED,
        target=organization,
        after={"name": name, "owner": owner.email},
        ip_address=ip_address,
    )
    return organization


def get_or_create_user(email):
    """The account for `email`, created without a usable password when missing. Returns (user, created)."""
    User = get_user_model()
    user = User.objects.filter(email__iexact=email).first()
    if user is not None:
        return user, False
    return User.objects.create_user(email=email, password=None), True
