"""Sign-in lockout (django-axes) and password-reset limits, through the pages as a person meets them."""

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from axes.models import AccessAttempt
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from organizations.audit import Action
from organizations.models import AuditEvent
from tests import factories
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

LIMIT = 5  # SIGN_IN_FAILURE_LIMIT's default, which these tests run with
HOME = "198.51.100.10"
ELSEWHERE = "203.0.113.20"
LOCKED = "signing in is locked for 15 minutes"


def sign_in(client, email, password, address=HOME):
    return client.post(reverse("login"), {"username": email, "password": password}, REMOTE_ADDR=address)


def signed_in(client):
    return "_auth_user_id" in client.session


def fail(client, email, times, address=HOME):
    """`times` wrong passwords; returns the status of each answer."""
    return [sign_in(client, email, "wrong-password", address).status_code for _ in range(times)]


@pytest.fixture
def person(organization):
    return factories.MembershipFactory(organization=organization, user__email="olivia@example.com").user


def test_an_account_is_locked_after_the_limit_and_the_page_says_so(client, person):
    """Failures 1..limit-1 are the usual "wrong password" page; the limit-th locks the account, and the
    sign-in page (not a bare error page) says for how long. The right password is then refused too."""
    assert fail(client, person.email, LIMIT - 1) == [200] * (LIMIT - 1)
    locked = sign_in(client, person.email, "wrong-password")
    assert locked.status_code == 429
    assert LOCKED in locked.content.decode()
    assert b'name="password"' in locked.content  # the sign-in form, not an error page
    assert int(locked["Retry-After"]) == 15 * 60
    refused = sign_in(client, person.email, PASSWORD)
    assert refused.status_code == 429
    assert LOCKED in refused.content.decode()
    assert not signed_in(client)


def test_the_account_lock_holds_from_every_address_and_whatever_the_case(client, person):
    """Failures from several addresses add up for the account, and "Olivia@…" is the same account."""
    for index in range(LIMIT):
        sign_in(client, "Olivia@Example.com" if index % 2 else person.email, "wrong", address=f"192.0.2.{index + 1}")
    response = sign_in(client, person.email, PASSWORD, address=ELSEWHERE)
    assert response.status_code == 429
    assert not signed_in(client)


def test_an_address_is_locked_after_the_limit_over_any_accounts(client, person):
    """Guessing across many accounts from one address locks that address: even a right password from
    it is refused, while the same person signs in from elsewhere."""
    for index in range(LIMIT):
        sign_in(client, f"guess{index}@example.com", "wrong")
    assert sign_in(client, person.email, PASSWORD).status_code == 429
    assert not signed_in(client)
    assert sign_in(client, person.email, PASSWORD, address=ELSEWHERE).status_code == 302
    assert signed_in(client)


def test_a_success_clears_the_persons_own_failures(client, person):
    """Someone who mistypes limit-1 times and then gets it right starts afresh: limit-1 more mistakes
    after signing out do not lock them out."""
    fail(client, person.email, LIMIT - 1)
    assert sign_in(client, person.email, PASSWORD).status_code == 302
    client.post(reverse("logout"))
    assert fail(client, person.email, LIMIT - 1) == [200] * (LIMIT - 1)
    assert sign_in(client, person.email, PASSWORD).status_code == 302


def test_a_success_with_one_account_does_not_clear_guesses_at_another(client, person, organization):
    """An attacker with one valid account cannot reset their guessing budget by signing in with it."""
    attacker = factories.MembershipFactory(organization=organization).user
    fail(client, person.email, LIMIT - 1)
    assert sign_in(client, attacker.email, PASSWORD).status_code == 302
    client.post(reverse("logout"))
    assert sign_in(client, person.email, "wrong").status_code == 429


def test_the_lock_runs_out_after_the_lockout_minutes(client, person):
    fail(client, person.email, LIMIT)
    with time_machine.travel(timezone.now() + timedelta(minutes=14), tick=False):
        assert sign_in(client, person.email, PASSWORD).status_code == 429
    # Attempts refused during the lock did not extend it: 15 minutes after the failure that caused it.
    with time_machine.travel(timezone.now() + timedelta(minutes=15, seconds=5), tick=False):
        assert sign_in(client, person.email, PASSWORD).status_code == 302


def test_a_lockout_is_audited_once_in_each_of_the_persons_organizations(client, person, organization, owner):
    """One event per lockout (not per refused attempt), in the audit log of every organization the
    account belongs to, which their owners and admins read; with the address it came from."""
    second = factories.OrganizationFactory(name="Second Org")
    factories.MembershipFactory(organization=second, user=person)
    fail(client, person.email, LIMIT + 3)
    events = AuditEvent.objects.filter(action=Action.SIGN_IN_LOCKED_OUT)
    assert sorted(event.organization.name for event in events) == ["Acme QA", "Second Org"]
    for event in events:
        assert event.target_label == person.email
        assert event.ip_address == HOME
        assert event.after == {"locked": "account", "failed_sign_ins": LIMIT, "minutes": 15}
    client.force_login(owner)
    page = client.get(reverse("audit_log", args=[organization.public_id]))
    assert "Sign-in locked out after failed attempts" in page.content.decode()
    assert person.email in page.content.decode()


def test_a_lockout_for_an_unknown_email_is_audited_without_an_organization(client, person):
    """Guessing at accounts that do not exist is recorded too (for the operator, in the Django admin),
    and says the address was locked when it was the address's failures that did it."""
    for index in range(LIMIT):
        sign_in(client, f"nobody{index}@example.com", "wrong")
    [event] = AuditEvent.objects.filter(action=Action.SIGN_IN_LOCKED_OUT)
    assert event.organization is None
    assert event.after["locked"] == "address"
    assert event.ip_address == HOME


def test_hostile_usernames_are_refused_without_an_error(client):
    """A username far longer than any email, or with a NUL in it, is a failed sign-in like any other."""
    for username in ["x" * 5000 + "@example.com", "a\x00b@example.com", ""]:
        assert sign_in(client, username, "wrong").status_code in (200, 429)
    assert AccessAttempt.objects.count() >= 1


def test_the_admin_sign_in_is_guarded_too(client, person):
    for _ in range(LIMIT):
        client.post(reverse("admin:login"), {"username": person.email, "password": "wrong"}, REMOTE_ADDR=HOME)
    assert sign_in(client, person.email, PASSWORD, address=ELSEWHERE).status_code == 429


def test_zero_turns_the_lockout_off(client, person, settings):
    settings.AXES_ENABLED = False
    assert set(fail(client, person.email, LIMIT + 2)) == {200}
    assert sign_in(client, person.email, PASSWORD).status_code == 302


# Password reset: per address and per email, with no mail past the limit and nothing revealed.


def reset(client, email, address=HOME):
    return client.post(reverse("password_reset"), {"email": email}, REMOTE_ADDR=address)


def test_password_reset_is_limited_per_email_without_telling_whether_it_has_an_account(client, person):
    """PASSWORD_RESET_LIMIT_PER_EMAIL (3) requests an hour naming one email send mail; the next says so
    and sends nothing. An email with no account gets the same answers, so nothing is revealed."""
    answers = {}
    for email, address in ((person.email, HOME), ("nobody@example.com", ELSEWHERE)):
        answers[email] = [reset(client, email, address).status_code for _ in range(3)]
        refused = reset(client, email, address)
        assert refused.status_code == 429
        assert "Too many password-reset requests" in refused.content.decode()
        assert "No mail was sent" in refused.content.decode()
        answers[email].append(re.sub(r"[\w-]{32,}", "TOKEN", refused.content.decode().replace(email, "EMAIL")))
    assert answers[person.email][:3] == answers["nobody@example.com"][:3] == [302, 302, 302]
    assert answers[person.email][3] == answers["nobody@example.com"][3]
    assert len(mail.outbox) == 3
    assert all(message.to == [person.email] for message in mail.outbox)


def test_password_reset_is_limited_per_address(client, person, settings):
    """PASSWORD_RESET_LIMIT_PER_ADDRESS requests an hour from one address, whatever emails they name;
    another address is unaffected."""
    settings.PASSWORD_RESET_LIMIT_PER_ADDRESS = 4
    assert [reset(client, f"n{index}@example.com").status_code for index in range(4)] == [302] * 4
    assert reset(client, person.email).status_code == 429
    assert mail.outbox == []
    assert reset(client, person.email, address=ELSEWHERE).status_code == 302
    assert len(mail.outbox) == 1


def test_password_reset_limits_start_again_in_the_next_hour(client, person):
    for _ in range(3):
        reset(client, person.email)
    assert reset(client, person.email).status_code == 429
    with time_machine.travel(timezone.now() + timedelta(hours=1), tick=False):
        assert reset(client, person.email).status_code == 302
    assert len(mail.outbox) == 4


def test_the_invitation_set_password_link_counts_against_the_email(client, organization, owner):
    """The accept page's "mail me a set-password link" sends the same mail, so it shares the limit."""
    from django.contrib.auth import get_user_model

    invitation = factories.InvitationFactory(organization=organization, invited_by=owner, email="new@example.com")
    get_user_model().objects.create_user(email=invitation.email, password=None)
    url = reverse("invitation_password_link", args=[invitation.token])
    for _ in range(3):
        assert b"on its way" in client.post(url, REMOTE_ADDR=HOME).content
    refused = client.post(url, REMOTE_ADDR=HOME)
    assert "Too many password-reset requests" in refused.content.decode()
    assert len(mail.outbox) == 3


@pytest.mark.parametrize(
    ("name", "value", "unit"),
    [
        ("SIGN_IN_FAILURE_LIMIT", "-3", "failed sign-ins"),
        ("SIGN_IN_LOCKOUT_MINUTES", "soon", "minutes"),
        ("PASSWORD_RESET_LIMIT_PER_EMAIL", "1.5", "requests per hour"),
    ],
)
def test_a_bad_throttle_setting_is_refused_at_start(name, value, unit):
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", "import katalon_admin.settings"],
        cwd=root,
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"{name} must be 0 (off) or a positive number of {unit}" in result.stderr
