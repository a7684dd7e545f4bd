"""Issue 10, pages on a phone and live data: cards instead of sideways-scrolling tables, a header
that folds behind Menu, readable chart labels, online licenses that refresh themselves, one time
format, a readable audit log and a usage filter that waits for custom dates."""

import itertools
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from organizations.audit import Action
from organizations.models import AuditEvent
from tests.e2e.conftest import sign_in
from tests.factories import (
    EngineSessionFactory,
    LicensePoolFactory,
    MachineFactory,
    MembershipFactory,
    OrganizationFactory,
    UserFactory,
)

PHONE, DESKTOP = 390, 1366
LONG_MACHINE_ID = "m" * 128
TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)? UTC$")

# Every visible control on the page and the document's width: nothing a person may need to press
# may lie outside the viewport, and the page itself must not scroll sideways.
LAYOUT = """() => {
  const width = document.documentElement.clientWidth;
  const outside = [];
  const controls = "header a, header summary, main a, main button, main input, main select, main summary";
  for (const element of document.querySelectorAll(controls)) {
    const box = element.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) continue;
    if (element.closest(".visually-hidden")) continue;
    if (box.left < -1 || box.right > width + 1) outside.push(element.outerHTML.slice(0, 90));
  }
  const wide = [...document.querySelectorAll("body *")]
    .filter((element) => element.getBoundingClientRect().right > width + 1 || element.scrollWidth > width + 1)
    .slice(0, 5).map((element) => element.outerHTML.slice(0, 90));
  return {width, scrollWidth: document.documentElement.scrollWidth, outside, wide};
}"""


@pytest.fixture
def acme(db):
    """An owner's organization with live RE sessions (two on one machine), a KSE pool, members,
    audit events with long values and enough session history for two pages."""
    owner = UserFactory(email="olivia@example.com", name="Olivia Owner")
    organization = OrganizationFactory(owner=owner, name="Acme QA")
    for n in range(3):
        MembershipFactory(organization=organization, user=UserFactory(email=f"member-{n}@example.com"))
    re_pool = LicensePoolFactory(organization=organization, product="RE", quota=10, machine_quota=10)
    LicensePoolFactory(organization=organization, product="KSE", quota=3)
    shared = MachineFactory(pool=re_pool, machine_id="ci-shared-agent", user=owner)
    now = timezone.now()
    for version, ago in (("10.2.0", 3), ("9.7.2", 1)):
        EngineSessionFactory(
            pool=re_pool, machine=shared, user=owner, engine_version=version, started_at=now - timedelta(minutes=ago)
        )
    EngineSessionFactory(pool=re_pool, machine=MachineFactory(pool=re_pool, machine_id=LONG_MACHINE_ID), user=owner)
    history_machine = MachineFactory(pool=re_pool, machine_id="ci-history")
    for n in range(55):
        started = now - timedelta(hours=2, minutes=n)
        EngineSessionFactory(
            pool=re_pool,
            machine=history_machine,
            user=owner,
            started_at=started,
            last_heartbeat_at=started + timedelta(minutes=1),
            lease_expires_at=started + timedelta(minutes=5),
            ended_at=started + timedelta(minutes=1),
            end_reason="released",
        )
    AuditEvent.objects.create(
        organization=organization,
        actor=owner,
        actor_label=owner.email,
        action=Action.ACTIVATION_REFUSED,
        target_label=f"RE on {LONG_MACHINE_ID}",
        after={
            "code": "machine_quota_exceeded",
            "message": "x" * 400,
            "machine_id": LONG_MACHINE_ID,
            "product": "RE",
            "details": {"quota": 10, "registered_machines": 10},
        },
    )
    AuditEvent.objects.create(
        organization=organization,
        actor=owner,
        actor_label=owner.email,
        action=Action.INVITATION_RESENT,
        target_label="member-0@example.com",
        before={"expires_at": "2026-12-01T08:57:59.941197+00:00"},
        after={"expires_at": "2026-12-08T08:57:59.941197+00:00"},
    )
    return organization


def org_url(page, organization, path):
    return f"{page.base_url}/o/{organization.public_id}/{path}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_no_page_scrolls_sideways_or_hides_an_action(page, acme, width):
    """At 390 and 1366 px, on every list page, the document is no wider than the viewport and every
    link, button and field is inside it; on a phone the tables are cards with labelled cells."""
    page.set_viewport_size({"width": width, "height": 800})
    sign_in(page, "olivia@example.com")
    for path in ("licenses/RE/", "licenses/KSE/", "members/", "usage/", "audit/", "notifications/"):
        page.goto(org_url(page, acme, path))
        layout = page.evaluate(LAYOUT)
        assert layout["scrollWidth"] <= width, (path, layout)
        assert layout["outside"] == [], (path, layout["outside"])
    for path in ("/my-licenses/", "/api-keys/"):
        page.goto(page.base_url + path)
        layout = page.evaluate(LAYOUT)
        assert layout["scrollWidth"] <= width and layout["outside"] == [], (path, layout)

    page.goto(org_url(page, acme, "licenses/RE/"))
    end_session = page.get_by_role("button", name=f"End session on {LONG_MACHINE_ID}")
    end_session.scroll_into_view_if_needed()
    box = end_session.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width
    cell = page.locator(f'#online-licenses td[data-label="Machine id"]:has-text("{LONG_MACHINE_ID}")')
    label = cell.evaluate("cell => getComputedStyle(cell, '::before').content")
    assert label == ('"Machine id"' if width == PHONE else "none")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_the_navigation_folds_behind_a_menu_button_on_a_phone_without_javascript(page_without_js, acme, width):
    """On a phone the header is one short line with a Menu button (a <details>, so no script is
    needed) that opens the links; on a desktop the links are simply there."""
    page = page_without_js
    page.set_viewport_size({"width": width, "height": 800})
    sign_in(page, "olivia@example.com")
    members = page.get_by_role("link", name="Members", exact=True)
    menu = page.locator("header summary.menu-button")
    if width == DESKTOP:
        expect(menu).to_be_hidden()
        expect(members).to_be_visible()
    else:
        assert page.locator("header").bounding_box()["height"] <= 60
        expect(members).to_be_hidden()
        menu.click()
        expect(members).to_be_in_viewport()
        layout = page.evaluate(LAYOUT)
        assert layout["scrollWidth"] <= width and layout["outside"] == [], layout
    members.click()
    expect(page).to_have_url(re.compile(r"/members/$"))


@pytest.mark.django_db(transaction=True)
def test_online_licenses_refresh_in_place_and_tell_sessions_on_one_machine_apart(page, acme):
    """The RE tab's live sessions show a short session id and the engine version, say when they
    were updated, and fetch themselves again (every 45 s, and when the tab comes back into view)
    without reloading the page."""
    sign_in(page, "olivia@example.com")
    page.goto(org_url(page, acme, "licenses/RE/"))
    sessions = page.get_by_role("table", name="Live sessions")
    shared_rows = sessions.get_by_role("row").filter(has_text="ci-shared-agent")
    expect(shared_rows).to_have_count(2)
    expect(shared_rows.filter(has_text="10.2.0")).to_have_count(1)
    expect(shared_rows.filter(has_text="9.7.2")).to_have_count(1)
    short_ids = shared_rows.locator('td[data-label="Session"] abbr').all_inner_texts()
    assert len(set(short_ids)) == 2 and all(re.fullmatch(r"s_\S{8}", short) for short in short_ids)

    section = page.locator("#online-licenses")
    assert "every 45s" in section.get_attribute("hx-trigger")
    freshness = section.locator(".freshness time")
    expect(freshness).to_have_text(re.compile(r"^(just now|\d+ s ago)$"))
    page.evaluate("window.stillTheSamePage = true")

    newcomer = EngineSessionFactory(
        pool=acme.pools.get(product="RE"),
        machine=MachineFactory(pool=acme.pools.get(product="RE"), machine_id="ci-newcomer"),
        user=acme.memberships.get(role="owner").user,
        engine_version="10.3.0",
    )
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    expect(sessions.get_by_role("row").filter(has_text="ci-newcomer")).to_contain_text("10.3.0")
    expect(sessions.locator(f"abbr[title='{newcomer.public_id}']")).to_have_text(newcomer.short_id)
    assert page.evaluate("window.stillTheSamePage") is True
    # Relative times keep the exact moment, with its zone, in their title.
    heartbeat = sessions.locator('td[data-label="Last heartbeat"] time').first
    assert TIME.match(heartbeat.get_attribute("title"))


@pytest.mark.django_db(transaction=True)
def test_without_javascript_the_live_list_says_when_it_was_drawn(page_without_js, acme):
    """Without JavaScript nothing refreshes, so the list says at what time it was drawn (not 'just
    now') and offers a reload; every other moment is shown in one format with its zone."""
    page = page_without_js
    sign_in(page, "olivia@example.com")
    page.goto(org_url(page, acme, "licenses/RE/"))
    section = page.locator("#online-licenses")
    expect(section.locator(".freshness")).to_contain_text(re.compile(r"Updated at \d\d:\d\d:\d\d UTC"))
    expect(section.get_by_role("link", name="Reload")).to_be_visible()
    started = section.locator('td[data-label="Started"] time').first
    assert TIME.match(started.inner_text()) and started.get_attribute("datetime")
    page.goto(org_url(page, acme, "audit/"))
    moments = page.locator('td[data-label="When"] time')
    expect(moments.first).to_be_visible()
    for moment in moments.all():
        assert TIME.match(moment.inner_text())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_the_audit_log_names_fields_formats_moments_and_folds_long_records(page, acme, width):
    """Each change reads as a named field with a formatted moment; a long record is folded in a
    <details> that opens in place, its long values wrapped inside the viewport."""
    page.set_viewport_size({"width": width, "height": 800})
    sign_in(page, "olivia@example.com")
    page.goto(org_url(page, acme, "audit/"))
    resent = page.get_by_role("row").filter(has_text="Resent an invitation")
    expect(resent.locator("dt")).to_have_text("Expires")
    expect(resent.locator("del time")).to_have_text("2026-12-01 08:57 UTC")
    expect(resent.locator("ins time")).to_have_text("2026-12-08 08:57 UTC")
    expect(resent).not_to_contain_text("expires_at")

    refused = page.get_by_role("row").filter(has_text="Activation refused")
    field = refused.get_by_text("Refusal code", exact=True)
    expect(field).to_be_hidden()
    refused.locator("summary").click()
    expect(field).to_be_visible()
    expect(refused).to_contain_text("Figures")
    expect(refused).to_contain_text("Registered machines: 10")
    layout = page.evaluate(LAYOUT)
    assert layout["scrollWidth"] <= width and layout["outside"] == [], layout
    assert refused.bounding_box()["x"] + refused.bounding_box()["width"] <= width + 1


@pytest.mark.django_db(transaction=True)
def test_custom_dates_wait_for_both_days_and_paging_updates_the_address(page, acme):
    """Choosing Custom dates asks for the days instead of showing errors; once both are set the
    chart comes back. Paging the session history in place puts the page in the address."""
    sign_in(page, "olivia@example.com")
    page.goto(org_url(page, acme, "usage/"))
    page.get_by_role("link", name="Next page").click()
    expect(page).to_have_url(re.compile(r"[?&]page=2"))
    expect(page.get_by_text(re.compile(r"^Page 2 of"))).to_be_visible()

    page.get_by_label("Range").select_option(label="Custom dates")
    expect(page.get_by_role("status").filter(has_text="Choose the first and the last day.")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)
    today = timezone.now().date()
    page.get_by_label("From:", exact=True).fill((today - timedelta(days=2)).isoformat())
    expect(page.get_by_text("Choose the last day too.")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)
    page.get_by_label("To:", exact=True).fill(today.isoformat())
    expect(page.locator("#usage-heading")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)


@pytest.mark.django_db(transaction=True)
def test_custom_dates_without_javascript(page_without_js, acme):
    """Without JavaScript nothing submits until Apply; Apply with the days shows the period."""
    page = page_without_js
    sign_in(page, "olivia@example.com")
    page.goto(org_url(page, acme, "usage/"))
    page.get_by_label("Range").select_option(label="Custom dates")
    today = timezone.now().date()
    page.get_by_label("From:", exact=True).fill((today - timedelta(days=2)).isoformat())
    page.get_by_label("To:", exact=True).fill(today.isoformat())
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#usage-heading")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_chart_labels_stay_readable_and_apart(page, acme, width):
    """The chart's labels are drawn at 11 px or more at both widths, and the time labels shown do
    not overlap (a phone shows fewer)."""
    page.set_viewport_size({"width": width, "height": 800})
    sign_in(page, "olivia@example.com")
    page.goto(org_url(page, acme, "usage/"))
    labels = page.evaluate(
        """() => [...document.querySelectorAll('.usage-chart text')]
          .filter(text => getComputedStyle(text).display !== 'none')
          .map(text => ({
            size: parseFloat(getComputedStyle(text).fontSize) * text.getScreenCTM().a,
            x: text.classList.contains('x-label') ? text.getBoundingClientRect() : null,
          }))"""
    )
    assert labels and min(label["size"] for label in labels) >= 11, labels
    boxes = sorted((label["x"] for label in labels if label["x"]), key=lambda box: box["left"])
    assert len(boxes) >= 2
    assert all(left["right"] <= right["left"] for left, right in itertools.pairwise(boxes)), boxes
