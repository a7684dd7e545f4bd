"""Throttling the ways in for people: sign-in (django-axes) and password-reset mails (Django's cache).

Sign-in: axes counts failed sign-ins in its AccessAttempt table, per account (the email tried) and per
client address; SIGN_IN_FAILURE_LIMIT failures for either lock it out for SIGN_IN_LOCKOUT_MINUTES. This
module gives axes the portal's view of a request (the proxy-aware client address, the email as stored),
answers a refused sign-in with the sign-in page saying why, records each lockout in the audit log of the
account's organizations, and forgives a person's own failures when they then sign in.

Password reset: PASSWORD_RESET_LIMIT_PER_ADDRESS requests an hour from one client address and
PASSWORD_RESET_LIMIT_PER_EMAIL naming one email address; past either the form says so and no mail is
sent. The email is counted whether or not it has an account, so the answer tells nothing about it.
"""

import hashlib
import logging
import math
import time

from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.db import transaction
from django.db.models import Max, Sum
from django.shortcuts import render
from django.utils import timezone

from . import audit
from .audit import Action
from .models import Membership

logger = logging.getLogger(__name__)

# axes' AccessAttempt.username holds 255 characters; an email is at most 254.
USERNAME_MAX_LENGTH = 254
RESET_WINDOW_SECONDS = 3600


def attempted_email(request, credentials):
    """The account a sign-in tried, as axes counts it: the email as the portal stores emails (lower case),
    so that "Olivia@…" and "olivia@…" share one count."""
    username = (credentials or {}).get("username")
    if username is None and request is not None:
        username = request.POST.get("username")
    if not username:
        return None
    return str(username).strip().lower().replace("\0", "")[:USERNAME_MAX_LENGTH]


def _failures(field, value):
    return AccessAttempt.objects.filter(**{field: value}).aggregate(
        failures=Sum("failures_since_start"), last=Max("attempt_time")
    )


def _minutes_left(request, username, address):
    """Minutes until every lock on this account and this address has run out, at least 1. Asked only
    when a sign-in is refused, so its queries cost nothing on any other request."""
    cool_off = get_cool_off(request)
    now = timezone.now()
    ends = [
        totals["last"] + cool_off
        for field, value in (("username", username), ("ip_address", address))
        if value is not None
        for totals in [_failures(field, value)]
        if (totals["failures"] or 0) >= settings.AXES_FAILURE_LIMIT
    ]
    end = max(ends, default=now + cool_off)
    return max(1, math.ceil((end - now).total_seconds() / 60))


def lockout_response(request, original_response=None, credentials=None):
    """axes' answer to a sign-in it refused: the sign-in page again, saying why and for how long (429,
    with Retry-After), instead of a bare error page. The form is not bound, so rendering it tries no
    authentication again; the email stays filled in."""
    username = attempted_email(request, credentials)
    minutes = _minutes_left(request, username, getattr(request, "axes_ip_address", None))
    message = (
        "Too many failed sign-ins for this account or from your network: signing in is locked for "
        f"{minutes} minute{'s' if minutes != 1 else ''}. Try again then, or reset your password meanwhile."
    )
    form = AuthenticationForm(request, initial={"username": request.POST.get("username", "")})
    # Rendered now: axes' middleware answers after the response phase that renders TemplateResponses.
    response = render(
        request,
        "registration/login.html",
        {"form": form, "lockout_message": message, "next": request.POST.get("next", "")},
        status=429,
    )
    response["Retry-After"] = str(minutes * 60)
    return response


def on_locked_out(sender, request, username, ip_address, **kwargs):
    """Record a lockout in the audit log of every organization the account belongs to, so their owners
    and admins see that someone was guessing; for an email with no organization (or no account), one
    event with no organization, seen in the Django admin. axes also sends this signal for each sign-in
    refused while locked; only the failure that caused the lockout carries its count, and only that one
    is recorded."""
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is None:
        return
    account_failures = (_failures("username", username)["failures"] or 0) if username else 0
    locked = "account" if account_failures >= settings.AXES_FAILURE_LIMIT else "address"
    memberships = Membership.objects.active().filter(user__email=username).select_related("user", "organization")
    details = {
        "locked": locked,
        "failed_sign_ins": failures,
        "minutes": int(get_cool_off(request).total_seconds() // 60),
    }
    with transaction.atomic():
        for membership in memberships or [None]:
            audit.record(
                organization=membership.organization if membership else None,
                actor=None,
                action=Action.SIGN_IN_LOCKED_OUT,
                target=membership.user if membership else None,
                target_label=username or "",
                after=details,
                ip_address=ip_address,
            )


def forgive_own_failures(sender, request, user, **kwargs):
    """A successful sign-in clears that account's failures from that address: a person who mistyped a
    few times starts afresh. Not the address's other failures, nor the account's from elsewhere: axes'
    own reset-on-success would clear both, and then one valid account would reset anyone's guessing."""
    if not settings.AXES_ENABLED or request is None:
        return
    AccessAttempt.objects.filter(username=user.get_username().lower(), ip_address=audit.client_ip(request)).delete()


def _count(key):
    """Add one to `key` in the cache for RESET_WINDOW_SECONDS and return the count, or 0 when the cache
    does not answer (then the request is let through: a reset mail is not worth an error page)."""
    try:
        if cache.add(key, 1, RESET_WINDOW_SECONDS + 5):
            return 1
        return cache.incr(key)
    except ValueError:  # expired between add() and incr()
        return 1
    except Exception as error:
        logger.warning("The cache counting password-reset requests does not answer (%s).", error)
        return 0


def password_reset_wait(address, email):
    """Count a password-reset request from `address` naming `email`. Returns the seconds to wait when it
    is over a limit (send nothing), else 0. The address is counted first, and the email only when the
    address is within its limit, so a flood from one address cannot use up someone's email allowance."""
    now = time.time()
    window = int(now // RESET_WINDOW_SECONDS)
    wait = max(1, math.ceil(RESET_WINDOW_SECONDS - now % RESET_WINDOW_SECONDS))
    per_address = settings.PASSWORD_RESET_LIMIT_PER_ADDRESS
    if per_address and _count(f"pwreset:address:{address}:{window}") > per_address:
        return wait
    per_email = settings.PASSWORD_RESET_LIMIT_PER_EMAIL
    email_digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    if per_email and _count(f"pwreset:email:{email_digest}:{window}") > per_email:
        return wait
    return 0


def password_reset_refusal(wait):
    minutes = max(1, math.ceil(wait / 60))
    return (
        "Too many password-reset requests from your network or for this email address. No mail was sent; "
        f"try again in {minutes} minute{'s' if minutes != 1 else ''}."
    )
