"""The RE tab's line in the browser: an admin sees who waits and takes an engine out, in place with
JavaScript and as a plain form post without."""

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import confirm, sign_in
from tests.factories import LicensePoolFactory, MembershipFactory, OrganizationFactory, QueueTicketFactory, UserFactory


@pytest.mark.django_db(transaction=True)
def test_an_admin_takes_an_engine_out_of_the_line_and_the_rest_move_up(any_page):
    page = any_page
    admin = UserFactory(email="adam@example.com", name="Adam Admin")
    organization = OrganizationFactory(name="Acme QA")
    MembershipFactory(organization=organization, user=admin, role="admin")
    mia = UserFactory(email="mia@example.com", name="Mia Member")
    MembershipFactory(organization=organization, user=mia)
    pool = LicensePoolFactory(organization=organization, product="RE", quota=1)
    for machine_id in ("ci-agent-1", "ci-agent-2", "ci-agent-3"):
        QueueTicketFactory(pool=pool, user=mia, machine_id=machine_id)

    sign_in(page, "adam@example.com")
    page.goto(f"{page.base_url}/o/{organization.public_id}/licenses/RE/")
    if page.javascript:
        page.evaluate("window.stillTheSamePage = true")
    line = page.get_by_role("table", name="Engines waiting for a license")
    expect(line.get_by_role("row")).to_have_count(4)  # the header and three engines
    expect(line.get_by_role("row").nth(1)).to_contain_text("ci-agent-1")
    expect(line.get_by_role("row").nth(1)).to_contain_text("Mia Member")

    page.get_by_role("button", name="Remove from line ci-agent-1 of Mia Member").click()
    confirm(page, "Remove from line")
    expect(page.get_by_role("status")).to_contain_text("Took ci-agent-1 of Mia Member out of the line")
    expect(line.get_by_role("row")).to_have_count(3)
    first = line.get_by_role("row").nth(1)
    expect(first.get_by_role("cell").first).to_have_text("1")
    expect(first).to_contain_text("ci-agent-2")
    if page.javascript:
        assert page.evaluate("window.stillTheSamePage") is True
