"""Choosing people at scale, and one's own account, in headless Chromium: JavaScript on and off,
at desktop (1366 px) and phone (390 px) widths where layout is concerned."""

import re

import pytest
from playwright.sync_api import expect

from organizations.models import Membership, Role, User
from tests.e2e.conftest import _open_page, sign_in
from tests.factories import PASSWORD, LicensePoolFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 768}


@pytest.fixture(params=[(True, PHONE), (False, DESKTOP)], ids=["js-390px", "no-js-1366px"])
def sized_page(request, browser, live_server):
    """JavaScript on at phone width, off at desktop width: both ways of working and both layouts,
    in two runs rather than four (browser tests are the slow part of CI)."""
    javascript, size = request.param
    pages = _open_page(browser, live_server, javascript=javascript)
    page = next(pages)
    page.set_viewport_size(size)
    yield page
    next(pages, None)  # closes the context and fails on any Content-Security-Policy refusal


def add_members(organization, names, role=Role.MEMBER):
    users = User.objects.bulk_create(
        [User(email=f"{name.lower().replace(' ', '-')}@example.com", name=name, password="!") for name in names]
    )
    Membership.objects.bulk_create([Membership(organization=organization, user=user, role=role) for user in users])


def assert_fits(page):
    """Nothing makes the page wider than the window."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"the page is {width} px wide"


def assert_on_screen(locator, page):
    box = locator.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"], box


def open_account_menu(page):
    """On a phone the header's links, the account menu among them, fold behind its Menu button."""
    menu_button = page.locator("header summary.menu-button")
    if menu_button.is_visible() and page.locator("header details.menu[open]").count() == 0:
        menu_button.click()
    page.locator(".account-menu > summary").click()


def test_the_chooser_finds_people_among_many_and_counts_licenses_left(sized_page):
    """Search narrows on the server in natural order; with JavaScript the count of licenses left
    follows each tick and ticks survive the next search; without, each search is a page of its own."""
    page = sized_page
    owner = UserFactory(email="olivia@example.com", name="Olivia Owner")
    organization = OrganizationFactory(owner=owner, name="Acme QA")
    add_members(organization, [f"Tester {n}" for n in range(1, 61)])
    LicensePoolFactory(organization=organization, product="KSE", quota=5)
    sign_in(page, owner.email)
    page.goto(page.base_url + f"/o/{organization.public_id}/licenses/KSE/")

    page.get_by_role("link", name="Assign licenses").click()
    chooser = page.get_by_role("dialog" if page.javascript else "region", name="Assign licenses")
    expect(chooser.get_by_text("5 licenses left")).to_be_visible()
    expect(chooser.get_by_text("Page 1 of 4")).to_be_visible()
    assert_fits(page)

    chooser.get_by_label("Search members").fill("Tester 1")
    if not page.javascript:
        chooser.get_by_role("button", name="Search").click()
    results = chooser.locator("#chooser-results").get_by_role("checkbox")
    expect(results).to_have_count(11)
    labels = chooser.locator("#chooser-results label")
    expect(labels.first).to_contain_text("Tester 1")
    expect(labels.nth(1)).to_contain_text("Tester 10")  # natural order: 1, 10, 11, …, not 1, 10, 100
    chooser.get_by_role("checkbox", name=re.compile(r"^Tester 1\b")).check()
    if page.javascript:
        expect(chooser.get_by_text("4 licenses left (1 chosen)")).to_be_visible()

    chooser.get_by_label("Search members").fill("tester-2@")
    if not page.javascript:
        chooser.get_by_role("button", name="Search").click()
    expect(chooser.locator("#chooser-results").get_by_role("checkbox")).to_have_count(1)
    chooser.get_by_role("checkbox", name=re.compile(r"^Tester 2\b")).check()
    if page.javascript:
        # The first tick moved to "Chosen" and still counts.
        expect(chooser.get_by_role("group", name="Chosen").get_by_role("checkbox")).to_be_checked()
        expect(chooser.get_by_text("3 licenses left (2 chosen)")).to_be_visible()
    assert_on_screen(chooser.get_by_role("button", name="Assign licenses"), page)
    chooser.get_by_role("button", name="Assign licenses").click()

    expect(
        page.get_by_text("Licensed Tester 1, Tester 2." if page.javascript else "Licensed Tester 2.")
    ).to_be_visible()
    licensed = page.get_by_role("table", name="Licensed users")
    expect(licensed.get_by_role("row", name=re.compile("tester-2@example.com"))).to_be_visible()
    assert_fits(page)


def test_the_members_list_searches_filters_and_acts_through_one_menu_per_row(sized_page):
    """Among 80 members: search, filter by role, then make one an admin from their row's menu."""
    page = sized_page
    owner = UserFactory(email="olivia@example.com", name="Olivia Owner")
    organization = OrganizationFactory(owner=owner, name="Acme QA")
    add_members(organization, [f"Member {n}" for n in range(1, 81)])
    add_members(organization, ["Ada Admin"], role=Role.ADMIN)
    sign_in(page, owner.email)
    page.goto(page.base_url + f"/o/{organization.public_id}/members/")
    active = page.get_by_role("region", name=re.compile("Active members"))
    expect(active.get_by_text("Page 1 of 2")).to_be_visible()

    search = page.get_by_role("search", name="Find members")
    search.get_by_label("Search").fill("member 1")
    if not page.javascript:
        search.get_by_role("button", name="Apply").click()
    expect(active.get_by_text("11 of 82 match.")).to_be_visible()
    rows = active.get_by_role("row").filter(has=page.get_by_role("cell"))
    expect(rows.first).to_contain_text("Member 1")
    expect(rows.nth(1)).to_contain_text("Member 10")
    assert "member+1" in page.url or "q=member" in page.url  # the address says what is shown

    search.get_by_label("Search").fill("")
    search.get_by_label("Role").select_option("Admin")
    if not page.javascript:
        search.get_by_role("button", name="Apply").click()
    expect(active.get_by_text("1 of 82 match.")).to_be_visible()
    search.get_by_label("Role").select_option("All roles")
    search.get_by_label("Search").fill("member-7@")
    if not page.javascript:
        search.get_by_role("button", name="Apply").click()
    # The count read "1 of 82" for the role filter already: wait for this search's own answer (its
    # address), or the row's menu would be opened in a list about to be replaced.
    expect(page).to_have_url(re.compile(r"q=member-7(%40|@)"))
    expect(active.get_by_text("1 of 82 match.")).to_be_visible()
    page.wait_for_load_state("networkidle")
    row = active.get_by_role("row", name=re.compile("member-7@example.com"))
    row.get_by_text("Actions").click()
    make_admin = row.get_by_role("button", name="Make admin member-7@example.com")
    expect(make_admin).to_be_visible()
    assert_on_screen(make_admin, page)
    make_admin.click()
    expect(page.get_by_text("Member 7 is now admin.")).to_be_visible()
    expect(active.get_by_role("row", name=re.compile("member-7@example.com"))).to_contain_text("Admin")
    if not page.javascript:
        # Back on the same filtered list.
        expect(page.get_by_role("search", name="Find members").get_by_label("Search")).to_have_value("member-7@")
    assert_fits(page)


def test_a_nameless_owner_names_themself_changes_their_password_and_signs_out_from_the_menu(sized_page):
    """The account menu shows the email until a name is set on the profile; the password change
    works from there; signing out is the menu's last item."""
    page = sized_page
    owner = UserFactory(email="olga@example.com", name="")
    OrganizationFactory(owner=owner, name="Acme QA")
    sign_in(page, owner.email)

    account = page.locator(".account-menu > summary")
    expect(account).to_have_text(re.compile("olga@example.com"))
    open_account_menu(page)
    profile = page.get_by_role("link", name="Profile and password")
    assert_on_screen(profile, page)
    profile.click()
    expect(page.get_by_role("heading", name="Your profile")).to_be_visible()
    page.get_by_label("Your name").fill("Olga Owner")
    page.get_by_role("button", name="Save name").click()
    expect(page.get_by_text("You are shown as Olga Owner.")).to_be_visible()
    expect(account).to_have_text(re.compile("Olga Owner"))

    page.get_by_role("link", name="Change password").click()
    page.get_by_label("Old password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill("a-much-better-secret-7")
    page.get_by_label("New password confirmation").fill("a-much-better-secret-7")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("heading", name="Your password is changed")).to_be_visible()
    assert_fits(page)

    open_account_menu(page)
    sign_out = page.get_by_role("button", name="Sign out")
    assert_on_screen(sign_out, page)
    sign_out.click()
    sign_in(page, owner.email, password="a-much-better-secret-7")
    expect(page.locator(".account-menu > summary")).to_have_text(re.compile("Olga Owner"))
