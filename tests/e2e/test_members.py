"""An owner brings their team in, in headless Chromium, with JavaScript on and off."""

import re

import pytest
from playwright.sync_api import expect

from tests import factories
from tests.e2e.conftest import confirm, sign_in

pytestmark = pytest.mark.django_db(transaction=True)

DANAS_PASSWORD = "trust-no-one-1013"


def remember_page(page):
    """With JavaScript on, mark the loaded page: the mark survives only if nothing reloads it."""
    if page.javascript:
        page.evaluate("window.__marker = 1")


def assert_not_reloaded(page):
    if page.javascript:
        assert page.evaluate("window.__marker") == 1, "the page reloaded for an in-place change"


def test_an_owner_invites_two_people_one_joins_changes_role_and_the_other_is_revoked(any_page, browser):
    """Invite two at once; one signs up through the link; make them admin and back; revoke the other."""
    page = any_page
    owner = factories.UserFactory(name="Olivia Owner")
    organization = factories.OrganizationFactory(owner=owner, name="Acme QA")
    sign_in(page, owner.email)
    page.get_by_role("link", name="Members").click()
    expect(page.get_by_role("heading", name="Members", exact=True)).to_be_visible()
    remember_page(page)

    page.get_by_label("Email addresses").fill("dana@example.com, evan@example.com")
    page.get_by_role("region", name="Invite people").get_by_label("Role", exact=True).select_option("Member")
    page.get_by_role("button", name="Send invitations").click()
    expect(page.get_by_text("Invitation sent to dana@example.com, evan@example.com.")).to_be_visible()
    pending = page.get_by_role("region", name=re.compile("Pending invitations"))
    expect(pending.get_by_role("heading")).to_have_text("Pending invitations (2)")
    expect(pending.get_by_role("row", name=re.compile("evan@example.com"))).to_be_visible()
    assert_not_reloaded(page)
    link = pending.get_by_label("Invitation link for dana@example.com").input_value()
    assert link.startswith(page.base_url + "/invitations/")

    # Dana opens the link in her own browser and signs up.
    danas_context = browser.new_context(java_script_enabled=page.javascript)
    dana = danas_context.new_page()
    dana.goto(link)
    expect(dana.get_by_role("heading", name="Join Acme QA")).to_be_visible()
    dana.get_by_label("Your name").fill("Dana Scully")
    dana.get_by_label("Password", exact=True).fill(DANAS_PASSWORD)
    dana.get_by_label("Confirm password").fill(DANAS_PASSWORD)
    dana.get_by_role("button", name="Create account and join").click()
    expect(dana.get_by_text("Welcome to Acme QA.")).to_be_visible()
    expect(dana.get_by_text("Dana Scully", exact=True)).to_be_visible()  # the account menu names her
    dana.goto(link)
    expect(dana.get_by_text("This invitation was already used.")).to_be_visible()
    danas_context.close()

    page.goto(page.base_url + f"/o/{organization.public_id}/members/")
    remember_page(page)
    active = page.get_by_role("region", name=re.compile("Active members"))
    danas_row = active.get_by_role("row", name=re.compile("dana@example.com"))
    expect(danas_row.get_by_role("cell", name=re.compile("^Dana Scully"))).to_be_visible()
    expect(danas_row.get_by_role("cell", name="Member", exact=True)).to_be_visible()
    expect(pending.get_by_role("row", name=re.compile("dana@example.com"))).to_have_count(0)

    danas_row.get_by_text("Actions").click()
    danas_row.get_by_role("button", name="Make admin dana@example.com").click()
    expect(page.get_by_text("Dana Scully is now admin.")).to_be_visible()
    expect(danas_row.get_by_role("cell", name="Admin", exact=True)).to_be_visible()
    danas_row.get_by_text("Actions").click()
    danas_row.get_by_role("button", name="Make member dana@example.com").click()
    expect(page.get_by_text("Dana Scully is now member.")).to_be_visible()
    expect(danas_row.get_by_role("cell", name="Member", exact=True)).to_be_visible()
    assert_not_reloaded(page)

    pending.get_by_role("button", name="Revoke invitation of evan@example.com").click()
    expect(page.get_by_text("Invitation to evan@example.com revoked.")).to_be_visible()
    expect(pending.get_by_role("row", name=re.compile("evan@example.com"))).to_have_count(0)
    expect(pending.get_by_text("No invitations are waiting.")).to_be_visible()
    assert_not_reloaded(page)


def test_a_bad_email_is_named_beside_the_form_and_nobody_is_invited(any_page):
    """The typed list stays in the box for correction."""
    page = any_page
    owner = factories.UserFactory()
    organization = factories.OrganizationFactory(owner=owner, name="Acme QA")
    sign_in(page, owner.email)
    page.goto(page.base_url + f"/o/{organization.public_id}/members/")
    remember_page(page)
    page.get_by_label("Email addresses").fill("ok@example.com, oops")
    page.get_by_role("button", name="Send invitations").click()
    expect(page.get_by_role("alert")).to_have_text("oops is not a valid email address.")
    expect(page.get_by_label("Email addresses")).to_have_value("ok@example.com, oops")
    expect(page.get_by_text("No invitations are waiting.")).to_be_visible()
    assert_not_reloaded(page)


def test_removing_a_member_moves_them_to_the_removed_list(any_page):
    """After confirming, the person leaves the active list and shows as removed by the owner."""
    page = any_page
    owner = factories.UserFactory(name="Olivia Owner")
    organization = factories.OrganizationFactory(owner=owner, name="Acme QA")
    factories.MembershipFactory(organization=organization, user__email="max@example.com", user__name="Max Muster")
    sign_in(page, owner.email)
    page.goto(page.base_url + f"/o/{organization.public_id}/members/")
    remember_page(page)

    active = page.get_by_role("region", name=re.compile("Active members"))
    expect(active.get_by_role("heading")).to_have_text("Active members (2)")
    page.get_by_role("row", name=re.compile("max@example.com")).get_by_text("Actions").click()
    page.get_by_role("button", name="Remove max@example.com").click()
    confirm(page, "Remove member")
    expect(page.get_by_text("Max Muster was removed")).to_be_visible()
    expect(active.get_by_role("row", name=re.compile("max@example.com"))).to_have_count(0)
    expect(active.get_by_role("heading")).to_have_text("Active members (1)")
    removed_row = page.get_by_role("region", name="Removed members").get_by_role("row", name=re.compile("max@example"))
    expect(removed_row.get_by_role("cell", name="Olivia Owner", exact=True)).to_be_visible()
    assert_not_reloaded(page)
