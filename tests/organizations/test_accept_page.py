import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from organizations.models import Invitation
from tests import factories

pytestmark = pytest.mark.django_db

SIGN_UP = {"name": "Dana Scully", "password": "trust-no-one-1013", "password_confirm": "trust-no-one-1013"}


def sign_in(client, email, password):
    """Sign in through the sign-in page, as a person does (and as axes, which guards it, requires)."""
    client.post(reverse("login"), {"username": email, "password": password})
    return "_auth_user_id" in client.session


def accept_url(invitation):
    return reverse("accept_invitation", args=[invitation.token])


def test_a_new_person_signs_up_and_is_signed_in(client, organization, invitation):
    """Name and password make the account; the person lands in the organization, signed in."""
    response = client.get(accept_url(invitation))
    assert b"Join Acme QA" in response.content and b"Create account and join" in response.content
    response = client.post(accept_url(invitation), SIGN_UP, follow=True)
    assert response.redirect_chain[0][0] == reverse("org_home", args=[organization.public_id])
    assert b"Welcome to Acme QA." in response.content
    user = get_user_model().objects.get(email=invitation.email)
    assert user.name == "Dana Scully"
    assert response.context["user"] == user


def test_a_weak_or_mismatched_password_re_renders_the_form(client, invitation):
    """Nothing is created until the form is right."""
    response = client.post(accept_url(invitation), {**SIGN_UP, "password_confirm": "other"})
    assert b"The two passwords differ." in response.content
    response = client.post(accept_url(invitation), {**SIGN_UP, "password": "12345678", "password_confirm": "12345678"})
    assert b"This password is too common." in response.content
    assert not get_user_model().objects.filter(email=invitation.email).exists()


def test_the_link_works_once(client, invitation):
    """A second use says it was already used."""
    client.post(accept_url(invitation), SIGN_UP)
    client.logout()
    response = client.get(accept_url(invitation))
    assert response.status_code == 410
    assert b"already used" in response.content


def test_an_expired_link_is_refused_clearly(client, invitation):
    """The person is told to ask for a resend."""
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.post(accept_url(invitation), SIGN_UP)
    assert response.status_code == 410
    assert b"expired" in response.content and b"resend" in response.content
    assert not get_user_model().objects.filter(email=invitation.email).exists()


def test_an_unknown_link_is_404(client, db):
    """A mistyped token is not found."""
    response = client.get(reverse("accept_invitation", args=["nope"]))
    assert response.status_code == 404
    assert b"not valid" in response.content


def test_a_signed_in_person_with_the_invited_email_accepts_with_one_click(client, organization, invitation):
    """No sign-up form, just Accept."""
    person = factories.UserFactory(email=invitation.email)
    client.force_login(person)
    assert b"Accept invitation" in client.get(accept_url(invitation)).content
    response = client.post(accept_url(invitation))
    assert response["Location"] == reverse("org_home", args=[organization.public_id])
    assert person.memberships.filter(organization=organization, removed_at__isnull=True).exists()


def test_a_signed_in_person_with_another_email_is_told_to_sign_out(client, organization, invitation):
    """Posting anyway changes nothing."""
    client.force_login(factories.UserFactory(email="someone.else@example.com"))
    response = client.get(accept_url(invitation))
    assert b"Sign out first" in response.content
    client.post(accept_url(invitation))
    invitation.refresh_from_db()
    assert invitation.is_pending
    response = client.post(reverse("logout"), {"next": accept_url(invitation)}, follow=True)
    assert b"Create account and join" in response.content


def test_an_existing_account_is_asked_to_sign_in_and_comes_back(client, invitation):
    """The sign-in link returns to the invitation."""
    factories.UserFactory(email=invitation.email)
    response = client.get(accept_url(invitation))
    assert b"Sign in to accept" in response.content
    assert f"next={accept_url(invitation).replace('/', '%2F')}".encode() in response.content
    client.post(accept_url(invitation), SIGN_UP)
    invitation.refresh_from_db()
    assert invitation.is_pending


@pytest.mark.parametrize(
    "account",
    [
        pytest.param({}, id="owner-who-never-set-a-password"),
        pytest.param({"is_staff": True, "is_superuser": True}, id="superuser-without-password"),
    ],
)
def test_a_link_to_an_account_without_a_password_cannot_take_it_over(client, organization, invitation, account):
    """Issue 13, item 1, as a visitor does it: opened signed out, the link offers no sign-up for an
    address that has an account, and a password posted anyway neither sets it nor signs anyone in."""
    victim = get_user_model().objects.create_user(email=invitation.email, password=None, **account)
    page = client.get(accept_url(invitation))
    assert b"already has an account here" in page.content
    assert b"Create account and join" not in page.content

    response = client.post(accept_url(invitation), SIGN_UP)
    assert response.status_code == 200
    assert b"already has an account here" in response.content
    victim.refresh_from_db()
    assert not victim.has_usable_password()
    assert "_auth_user_id" not in client.session
    assert not victim.memberships.exists()
    assert not sign_in(client, invitation.email, SIGN_UP["password"])


def test_the_page_says_plainly_which_case_applies(client, invitation):
    """No account: create one here. An account: sign in as it; the link changes nothing about it."""
    assert b"There is no account for newcomer@example.com yet" in client.get(accept_url(invitation)).content
    get_user_model().objects.create_user(email=invitation.email, password=None)
    page = client.get(accept_url(invitation)).content
    assert b"newcomer@example.com already has an account here" in page
    assert b"does not create, change or sign in to that account" in page


def test_an_account_without_a_password_gets_a_link_mailed_to_the_address_and_then_accepts(
    client, organization, invitation
):
    """The way in for an owner who never set a password: the set-password link goes to the invited
    address itself, naming the invitation; once set, they sign in and accept as themselves."""
    account = get_user_model().objects.create_user(email=invitation.email, password=None)
    response = client.post(reverse("invitation_password_link", args=[invitation.token]))
    assert b"a link to set its password is on its way" in response.content
    [message] = mail.outbox
    assert message.to == [invitation.email]
    assert "http://testserver" + accept_url(invitation) in message.body
    reset_link = re.search(r"http://testserver(/accounts/reset/\S+/)", message.body).group(1)
    account.refresh_from_db()
    assert not account.has_usable_password()  # Asking for the mail changes nothing yet.

    form_url = client.get(reset_link)["Location"]
    client.post(form_url, {"new_password1": "my-own-new-password-7", "new_password2": "my-own-new-password-7"})
    assert sign_in(client, invitation.email, "my-own-new-password-7")
    assert b"Accept invitation" in client.get(accept_url(invitation)).content
    client.post(accept_url(invitation))
    assert account.memberships.filter(organization=organization, removed_at__isnull=True).exists()


def test_the_set_password_link_is_only_for_a_usable_invitation(client, invitation):
    """A revoked invitation sends no mail."""
    get_user_model().objects.create_user(email=invitation.email, password=None)
    Invitation.objects.filter(pk=invitation.pk).update(revoked_at=timezone.now())
    response = client.post(reverse("invitation_password_link", args=[invitation.token]))
    assert response.status_code == 410
    assert not mail.outbox
