"""Issue 13, item 1, in the browser: an invitation link copied by another organization's owner
cannot take over an account that never had a password; its owner gets in by a mailed link."""

import re

import pytest
from django.core import mail
from playwright.sync_api import expect

from organizations import actions
from organizations.models import Membership, User
from tests import factories
from tests.e2e.conftest import sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_copied_link_cannot_take_over_an_owner_without_a_password(page, browser):
    """The attacker opens the link signed out: no sign-up form, only "sign in as that account" and
    a set-password mail that goes to the victim's address; the victim follows it and joins."""
    victim, _ = actions.get_or_create_user("victim@corp.example")
    victims_org = actions.create_organization(name="Victim Corp", owner=victim)
    attacker = factories.UserFactory()
    attackers_org = factories.OrganizationFactory(owner=attacker, name="Attacker Labs")

    sign_in(page, attacker.email)
    page.goto(page.base_url + f"/o/{attackers_org.public_id}/members/")
    page.get_by_label("Email addresses").fill(victim.email)
    page.get_by_role("button", name="Send invitations").click()
    link = page.get_by_label(f"Invitation link for {victim.email}").input_value()

    signed_out = browser.new_context().new_page()
    signed_out.goto(link)
    expect(signed_out.get_by_text("victim@corp.example already has an account here.")).to_be_visible()
    expect(signed_out.get_by_label("Password", exact=True)).to_have_count(0)
    signed_out.get_by_role("button", name="Email me a link to set the password").click()
    expect(signed_out.get_by_text("a link to set its password is on its way")).to_be_visible()
    victim.refresh_from_db()
    assert not victim.has_usable_password()
    signed_out.context.close()

    [message] = mail.outbox[-1:]
    assert message.to == ["victim@corp.example"]
    reset_link = re.search(r"http://\S+/accounts/reset/\S+/", message.body).group(0)
    victims_browser = browser.new_context().new_page()
    victims_browser.goto(reset_link)
    victims_browser.get_by_label("New password").fill("the-victims-own-pw-1")
    victims_browser.get_by_label("Confirm password").fill("the-victims-own-pw-1")
    victims_browser.get_by_role("button", name="Set password").click()
    victims_browser.base_url = page.base_url
    sign_in(victims_browser, victim.email, "the-victims-own-pw-1")
    victims_browser.goto(link)
    victims_browser.get_by_role("button", name="Accept invitation").click()
    expect(victims_browser.get_by_text("Welcome to Attacker Labs.")).to_be_visible()
    victims_browser.context.close()

    assert Membership.objects.active().filter(organization=attackers_org, user=victim).exists()
    assert Membership.objects.active().get(organization=victims_org, user=victim).role == "owner"
    assert User.objects.get(pk=victim.pk).check_password("the-victims-own-pw-1")
