"""How a page finds its organization: from the URL, among the signed-in person's memberships only,
so another organization's page or object is a 404, never a 403 that confirms it exists."""

import re
from functools import wraps

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404

from .models import Membership

# The organization a person last worked in: where "home" and pages outside any organization
# (API keys, My licenses) take them, instead of whichever organization sorts first. A cookie, not
# the session, so recording it costs no database write; it only ever picks among the person's own
# memberships, so a forged value reaches nothing.
LAST_ORGANIZATION_COOKIE = "last_organization"
# What an organization id in a URL can be (a slug, as long as the column); anything else in the
# cookie (a NUL byte, say, which PostgreSQL refuses in a query) is treated as no cookie at all.
ORGANIZATION_ID = re.compile(r"[-a-zA-Z0-9_]{1,20}")


def last_organization_id(request):
    """The organization id the person last worked in, from their cookie; None when absent or malformed."""
    value = request.COOKIES.get(LAST_ORGANIZATION_COOKIE, "")
    return value if ORGANIZATION_ID.fullmatch(value) else None


def org_member_required(view):
    """The view receives the organization as `request.organization` and the person's membership as
    `request.membership`; anybody who is not an active member gets a 404."""

    @login_required
    @wraps(view)
    def wrapper(request, org_id, *args, **kwargs):
        membership = get_object_or_404(
            Membership.objects.active().select_related("organization"),
            organization__public_id=org_id,
            user=request.user,
        )
        request.membership = membership
        request.organization = membership.organization
        response = view(request, *args, **kwargs)
        if request.COOKIES.get(LAST_ORGANIZATION_COOKIE) != org_id:
            response.set_cookie(
                LAST_ORGANIZATION_COOKIE,
                org_id,
                max_age=365 * 24 * 3600,
                secure=settings.SESSION_COOKIE_SECURE,
                httponly=True,
                samesite="Lax",
            )
        return response

    return wrapper


def org_manager_required(view):
    """Like org_member_required, and only owners and admins pass; members get a 403."""

    @org_member_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.membership.can_manage:
            raise PermissionDenied("Only owners and admins can do this.")
        return view(request, *args, **kwargs)

    return wrapper


def org_owner_required(view):
    @org_member_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.membership.is_owner:
            raise PermissionDenied("Only the owner can do this.")
        return view(request, *args, **kwargs)

    return wrapper
