import csv
import io
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import expect

from sessions_app.models import EndReason, EngineSession
from tests import factories
from tests.e2e.conftest import confirm, sign_in


def ended(pool, user, machine, *, started_ago, minutes, reason):
    started = timezone.now() - started_ago
    return EngineSession(
        pool=pool,
        user=user,
        machine=machine,
        hostname=machine.hostname,
        started_at=started,
        last_heartbeat_at=started + timedelta(minutes=minutes),
        lease_expires_at=started + timedelta(minutes=minutes + 5),
        ended_at=started + timedelta(minutes=minutes),
        end_reason=reason,
    )


@pytest.fixture
def usage_history(db):
    """Acme QA's RE pool: Alice's sessions today, Bob's expired ones five days ago, one live."""
    owner = factories.UserFactory(email="olivia@example.com")
    organization = factories.OrganizationFactory(owner=owner, name="Acme QA")
    pool = factories.LicensePoolFactory(organization=organization, product="RE", quota=2)
    alice = factories.UserFactory(email="alice@example.com", name="Alice")
    bob = factories.UserFactory(email="bob@example.com", name="Bob")
    machine = factories.MachineFactory(pool=pool, machine_id="ci-agent-1")
    EngineSession.objects.bulk_create(
        [
            *[
                ended(pool, alice, machine, started_ago=timedelta(hours=3 + n), minutes=50, reason=EndReason.RELEASED)
                for n in range(3)
            ],
            *[
                ended(pool, bob, machine, started_ago=timedelta(days=5, hours=n), minutes=90, reason=EndReason.EXPIRED)
                for n in range(2)
            ],
        ]
    )
    factories.EngineSessionFactory(pool=pool, machine=machine, user=alice)
    return organization


@pytest.mark.django_db(transaction=True)
def test_a_person_filters_usage_in_place_and_downloads_the_csv(page, usage_history):
    """Changing the range and a filter updates the chart, figures and table without a page load,
    the address follows the filter, and the CSV downloads exactly the rows shown."""
    sign_in(page, "olivia@example.com")
    page.goto(page.base_url + reverse("usage", args=[usage_history.public_id]))
    history = page.get_by_role("table").filter(has=page.get_by_role("columnheader", name="Session id"))
    expect(history.get_by_role("row")).to_have_count(1 + 6)
    page.evaluate("window.stillTheSamePage = true")

    page.get_by_label("Range").select_option(label="Last 24 hours")
    expect(page.get_by_role("img", name=re.compile("per hour, the last 24 hours"))).to_be_visible()
    expect(history.get_by_role("row")).to_have_count(1 + 4)

    page.get_by_label("Range").select_option(label="Last 7 days")
    page.get_by_label("End reason").select_option(label="Lease expired")
    expect(page.get_by_role("img", name=re.compile("per 6 hours, the last 7 days"))).to_be_visible()
    expect(history.get_by_role("row")).to_have_count(1 + 2)
    expect(history).to_contain_text("bob@example.com")
    expect(history).not_to_contain_text("alice@example.com")
    assert page.evaluate("window.stillTheSamePage") is True
    assert "range=7d" in page.url and "reason=expired" in page.url

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    download = download_info.value
    header, *rows = list(csv.reader(io.StringIO(download.path().read_text(encoding="utf-8"))))
    assert header[1] == "Email"
    assert sorted(row[1] for row in rows) == ["bob@example.com", "bob@example.com"]
    assert {row[9] for row in rows} == {"expired"}


@pytest.mark.django_db(transaction=True)
def test_the_filter_works_without_javascript(page_without_js, usage_history):
    """Without JavaScript the filter is a plain GET form: Apply loads the filtered page."""
    page = page_without_js
    sign_in(page, "olivia@example.com")
    page.goto(page.base_url + reverse("usage", args=[usage_history.public_id]))
    page.get_by_label("User").fill("bob")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_load_state()
    history = page.get_by_role("table").filter(has=page.get_by_role("columnheader", name="Session id"))
    expect(history.get_by_role("row")).to_have_count(1 + 2)
    assert "user=bob" in page.url


@pytest.mark.django_db(transaction=True)
def test_a_person_ends_their_own_session(any_page):
    """On My licenses a person ends their own live session, with and without JavaScript."""
    page = any_page
    person = factories.UserFactory(email="mia@example.com")
    organization = factories.OrganizationFactory(name="Acme QA")
    factories.MembershipFactory(organization=organization, user=person)
    pool = factories.LicensePoolFactory(organization=organization, product="RE")
    machine = factories.MachineFactory(pool=pool, machine_id="laptop-mia", user=person)
    session = factories.EngineSessionFactory(pool=pool, machine=machine, user=person)
    sign_in(page, "mia@example.com")
    page.goto(page.base_url + reverse("my_licenses"))
    expect(page.get_by_role("heading", name="Acme QA")).to_be_visible()
    page.get_by_role("button", name=f"End session {session.public_id} on laptop-mia").click()
    confirm(page, "End session")
    expect(page.get_by_text(f"Session {session.public_id} ended; its license is free.")).to_be_visible()
    expect(page.get_by_text("No live sessions.")).to_be_visible()
    session.refresh_from_db()
    assert session.end_reason == EndReason.RELEASED
