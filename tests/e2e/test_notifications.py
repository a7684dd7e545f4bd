"""An owner sets up email alerts and a webhook endpoint in the browser, with JavaScript on and off,
and a real receiver gets a test event it can verify."""

import pytest
from playwright.sync_api import expect

from tests import factories
from tests.e2e.conftest import sign_in
from tests.notifications.conftest import Receiver, run_worker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


def test_an_owner_adds_an_endpoint_and_sends_it_a_test_event(any_page, receiver, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the receiver listens on loopback
    page = any_page
    owner = factories.UserFactory()
    factories.OrganizationFactory(name="Acme QA", owner=owner)
    sign_in(page, owner.email)
    page.get_by_role("link", name="Notifications").click()
    expect(page.get_by_role("heading", name="Notifications", level=1)).to_be_visible()

    page.get_by_label("URL").fill("http://169.254.169.254/latest/meta-data/")
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.get_by_role("alert").filter(has_text="169.254.169.254 is a link-local address")).to_be_visible()

    page.get_by_label("URL").fill(receiver.url)
    page.get_by_label("Description").fill("QA chat")
    page.get_by_role("button", name="Add endpoint").click()
    secret = page.locator("#new-secret")
    expect(secret).to_contain_text("whsec_")
    signing_secret = secret.inner_text().strip()
    expect(page.get_by_role("cell", name=receiver.url)).to_be_visible()

    page.get_by_role("link", name="Send it a test event").click()
    page.get_by_role("button", name="Send test event").click()
    expect(page.get_by_text("Sent a test event")).to_be_visible()
    expect(page.get_by_role("cell", name="webhook.test")).to_be_visible()
    run_worker()
    (request,) = receiver.wait_for(1)
    assert request.verify(signing_secret)["type"] == "webhook.test"
    if not page.javascript:
        page.reload()
    # With JavaScript the log refreshes itself while a delivery is pending.
    expect(page.locator("#deliveries").get_by_text("Delivered")).to_be_visible()
    expect(page.get_by_role("cell", name="200", exact=True)).to_be_visible()


def test_an_admin_chooses_their_email_alerts(any_page):
    page = any_page
    organization = factories.OrganizationFactory(name="Acme QA")
    admin = factories.MembershipFactory(organization=organization, role="admin").user
    sign_in(page, admin.email)
    page.goto(f"{page.base_url}/o/{organization.public_id}/notifications/")
    quota_reached = page.get_by_label("quota.reached: An activation or a license grant was refused", exact=False)
    expect(quota_reached).to_be_checked()
    page.get_by_label("seat.granted", exact=False).check()
    page.get_by_label("One daily digest instead").check()
    page.get_by_role("button", name="Save email alerts").click()
    expect(page.get_by_text("Saved your email alerts.")).to_be_visible()
    page.reload()
    expect(page.get_by_label("seat.granted", exact=False)).to_be_checked()
    expect(page.get_by_label("One daily digest instead")).to_be_checked()
