import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import confirm, sign_in
from tests.factories import (
    EngineSessionFactory,
    LicensedUserFactory,
    LicensePoolFactory,
    MachineFactory,
    MembershipFactory,
    OrganizationFactory,
    UserFactory,
)


def figure(page, term):
    """The value a figure of the subscription panel shows, read as the definition of its term."""
    return page.get_by_role("term").filter(has_text=re.compile(f"^{term}$")).locator("xpath=following-sibling::dd[1]")


def open_chooser(page):
    """The "Assign licenses" chooser: a dialog with JavaScript, a page of its own without."""
    page.get_by_role("link", name="Assign licenses").click()
    if page.javascript:
        chooser = page.get_by_role("dialog", name="Assign licenses")
    else:
        chooser = page.get_by_role("region", name="Assign licenses")
    expect(chooser).to_be_visible()
    return chooser


def tick(chooser, who):
    chooser.get_by_role("checkbox", name=re.compile(who)).check()


@pytest.mark.django_db(transaction=True)
def test_an_owner_assigns_the_only_license_is_refused_a_second_then_revokes_and_reassigns(any_page):
    """With one KSE license: assign it to Mia (in place with JavaScript), see 'available' drop to 0,
    be stopped for Nick (before sending with JavaScript, by the server without), revoke Mia's license
    and assign it to Nick."""
    page = any_page
    owner = UserFactory(email="olivia@example.com", name="Olivia Owner")
    organization = OrganizationFactory(owner=owner, name="Acme QA")
    MembershipFactory(organization=organization, user=UserFactory(email="mia@example.com", name="Mia Member"))
    MembershipFactory(organization=organization, user=UserFactory(email="nick@example.com", name="Nick Newcomer"))
    LicensePoolFactory(organization=organization, product="KSE", quota=1)

    sign_in(page, "olivia@example.com")
    page.get_by_role("link", name="Licenses", exact=True).click()
    page.wait_for_load_state()
    expect(page.get_by_role("heading", name="Licensed users")).to_be_visible()
    available = figure(page, "Available")
    expect(available).to_have_text("1")
    if page.javascript:
        # Survives only if the page is never reloaded.
        page.evaluate("window.stillTheSamePage = true")
    licensed = page.get_by_role("table", name="Licensed users")

    chooser = open_chooser(page)
    expect(chooser.get_by_text("1 license left")).to_be_visible()
    tick(chooser, "Mia Member")
    chooser.get_by_role("button", name="Assign licenses").click()
    expect(page.get_by_text("Licensed Mia Member.")).to_be_visible()
    expect(available).to_have_text("0")
    expect(licensed.get_by_role("row", name=re.compile("mia@example.com"))).to_be_visible()

    chooser = open_chooser(page)
    tick(chooser, "Nick Newcomer")
    if page.javascript:
        expect(chooser.get_by_text("1 chosen but only 0 licenses left: untick 1.")).to_be_visible()
        expect(chooser.get_by_role("button", name="Assign licenses")).to_be_disabled()
        chooser.get_by_role("button", name="Close").click()
        expect(chooser).to_be_hidden()
    else:
        chooser.get_by_role("button", name="Assign licenses").click()
        expect(page.get_by_role("alert")).to_have_text("1 of 1 licenses are assigned in Acme QA; revoke one first.")
        expect(page.get_by_role("checkbox", name=re.compile("Nick Newcomer"))).to_be_checked()
        page.get_by_role("link", name=re.compile("Back to the")).click()
    expect(available).to_have_text("0")
    expect(licensed.get_by_role("row", name=re.compile("nick@example.com"))).to_have_count(0)

    page.get_by_role("button", name="Revoke the license of Mia Member").click()
    confirm(page, "Withdraw license")
    expect(available).to_have_text("1")
    expect(licensed).to_have_count(0)

    chooser = open_chooser(page)
    tick(chooser, "Nick Newcomer")
    chooser.get_by_role("button", name="Assign licenses").click()
    expect(available).to_have_text("0")
    expect(licensed.get_by_role("row", name=re.compile("nick@example.com"))).to_be_visible()
    expect(licensed.get_by_role("row", name=re.compile("mia@example.com"))).to_have_count(0)
    if page.javascript:
        assert page.evaluate("window.stillTheSamePage") is True


@pytest.mark.django_db(transaction=True)
def test_an_admin_revokes_several_ends_a_session_and_issues_an_offline_license_in_place(page):
    """With JavaScript: revoke two checked licensed users at once, end a live session and create an
    offline license, each without a page load, then download the signed file."""
    admin = UserFactory(email="adam@example.com", name="Adam Admin")
    organization = OrganizationFactory(name="Acme QA")
    MembershipFactory(organization=organization, user=admin, role="admin")
    mia = UserFactory(email="mia@example.com", name="Mia Member")
    nick = UserFactory(email="nick@example.com", name="Nick Newcomer")
    for person in (mia, nick):
        MembershipFactory(organization=organization, user=person)
    pool = LicensePoolFactory(organization=organization, product="KSE", quota=3)
    for person in (mia, nick):
        LicensedUserFactory(pool=pool, user=person)
    EngineSessionFactory(pool=pool, user=mia, machine=MachineFactory(pool=pool, machine_id="mia-laptop"))

    sign_in(page, "adam@example.com")
    page.goto(f"{page.base_url}/o/{organization.public_id}/licenses/KSE/")
    page.evaluate("window.stillTheSamePage = true")
    expect(figure(page, "Online licenses")).to_have_text("1")

    page.get_by_role("button", name="End session on mia-laptop").click()
    confirm(page, "End session")
    expect(page.get_by_role("status")).to_contain_text("Ended the session on mia-laptop")
    expect(figure(page, "Online licenses")).to_have_text("0")

    page.get_by_label("Select Mia Member").check()
    page.get_by_label("Select Nick Newcomer").check()
    page.get_by_role("button", name="Revoke selected").click()
    confirm(page, "Withdraw 2 licenses")
    expect(figure(page, "Available")).to_have_text("3")
    expect(page.get_by_text("Nobody holds a license yet.")).to_be_visible()

    page.get_by_label("Machine id").fill("air-gapped-7")
    page.get_by_role("button", name="Create offline license").click()
    confirm(page, "Create offline license")
    expect(figure(page, "Offline licenses")).to_have_text("1")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download KSE_air-gapped-7.lic").click()
    assert download.value.suggested_filename == "KSE_air-gapped-7.lic"
    assert page.evaluate("window.stillTheSamePage") is True
