from .models import Membership
from .permissions import last_organization_id


def organizations(request):
    """The current organization and the switcher's list, for the base layout."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    # An htmx answer renders several fragments, each running the context processors: read once.
    cached = getattr(request, "_organizations_context", None)
    if cached is None:
        cached = request._organizations_context = _organizations(request, user)
    return cached


def _organizations(request, user):
    memberships = list(
        Membership.objects.active().filter(user=user).select_related("organization").order_by("organization__name")
    )
    current = getattr(request, "organization", None)
    if current is None and memberships:
        last = last_organization_id(request)
        current = next((m.organization for m in memberships if m.organization.public_id == last), None)
        current = current or memberships[0].organization
    return {
        "my_memberships": memberships,
        "current_organization": current,
        "current_membership": getattr(request, "membership", None)
        or next((m for m in memberships if current and m.organization_id == current.pk), None),
    }
