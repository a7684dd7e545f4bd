"""The command generator builds both commands in the browser, says what is wrong beside each
field, and never loses a key it has just created."""

import re
import shlex

import pytest
from playwright.sync_api import expect

from sessions_app.models import ApiKey
from tests import factories
from tests.e2e.conftest import sign_in

pytestmark = pytest.mark.django_db(transaction=True)

TRICKY_PATH = """/builds/it's "$HOME"/shop.prj"""


@pytest.fixture
def person():
    organization = factories.OrganizationFactory(name="Acme QA")
    factories.LicensePoolFactory(organization=organization, product="RE", quota=2)
    return factories.MembershipFactory(organization=organization).user, organization


def open_generator(page, person):
    user, organization = person
    sign_in(page, user.email)
    page.goto(page.base_url + f"/command-generator/?org={organization.public_id}")


def fill_choices(page):
    page.get_by_label("Project path").fill(TRICKY_PATH)
    page.get_by_label("Retries").fill("2")
    page.get_by_label("Wait for a free license").fill("30m")
    page.get_by_label("Deregister the machine").check()


def test_the_browser_writes_the_same_commands_as_the_server(browser, live_server, person):
    """The commands built as the person types are exactly the ones the server writes without a script."""
    commands = {}
    for javascript in (True, False):
        context = browser.new_context(java_script_enabled=javascript)
        page = context.new_page()
        page.base_url = live_server.url
        open_generator(page, person)
        fill_choices(page)
        if not javascript:
            page.get_by_role("button", name="Update commands").click()
        commands[javascript] = (
            page.get_by_label("Command for katalonc").input_value(),
            page.get_by_label("Command wrapped in katalon-license").input_value(),
        )
        context.close()
    assert commands[True] == commands[False]
    plain, wrapped = commands[True]
    assert f"-projectPath={TRICKY_PATH}" in shlex.split(plain)
    assert "--ephemeral --wait 30m -- katalonc" in wrapped


def test_a_bad_value_is_named_beside_its_field_and_hides_the_command(page, person):
    """Retries -5 is not shown as -retry=0: the field says why, the commands wait for a fix."""
    open_generator(page, person)
    page.get_by_label("Retries").fill("-5")
    expect(page.locator("#id_retry_error")).to_have_text("Retries must be a whole number from 0 to 100.")
    expect(page.get_by_label("Retries")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("status").filter(has_text="Fix Retries to see the commands.")).to_be_visible()
    expect(page.get_by_label("Command for katalonc")).to_be_hidden()
    page.get_by_label("Project path").fill("")
    expect(page.locator("#id_project_path_error")).to_have_text("Enter the project path (up to 1000 characters).")
    page.get_by_label("Retries").fill("1")
    page.get_by_label("Project path").fill("/p.prj")
    expect(page.get_by_label("Command for katalonc")).to_have_value(re.compile(r'-projectPath="/p.prj" -retry=1 '))
    expect(page.locator("#id_retry_error")).to_be_hidden()


def test_a_key_created_while_typing_stays_until_dismissed(page, person):
    """Typing and clicking at once used to lose the new key to a late refresh; now each key gets its
    own name and panel, is in both commands, and survives further edits until dismissed."""
    open_generator(page, person)
    page.get_by_label("Test suite path").fill("Test Suites/Nightly")
    page.get_by_role("button", name="Create a key for this command").click()
    first = page.locator(".new-key").first
    expect(first).to_be_focused()
    first_key = first.get_attribute("data-raw-key")
    page.get_by_label("Retries").fill("4")
    plain = page.get_by_label("Command for katalonc")
    expect(plain).to_have_value(re.compile(rf"-retry=4 .*-apiKey={first_key} "))
    expect(page.get_by_label("Command wrapped in katalon-license")).to_have_value(
        re.compile(rf"export KATALON_API_KEY={first_key}\n")
    )

    page.get_by_role("button", name="Create a key for this command").click()
    expect(page.locator(".new-key")).to_have_count(2)
    second_key = page.locator(".new-key").first.get_attribute("data-raw-key")
    assert second_key != first_key
    expect(plain).to_have_value(re.compile(rf"-apiKey={second_key} "))
    names = list(ApiKey.objects.values_list("name", flat=True))
    assert len(names) == 2 and len(set(names)) == 2

    page.locator(".new-key").first.get_by_role("link", name="Dismiss").click()
    expect(page.locator(".new-key")).to_have_count(1)
    expect(plain).to_have_value(re.compile(rf"-apiKey={first_key} "))
    page.get_by_role("link", name="Dismiss").click()
    expect(plain).to_have_value(re.compile(r"-apiKey='<your-api-key>' "))


def test_the_generator_works_without_javascript(page_without_js, person):
    """Without a script the form asks the server; errors show beside fields; a key is shown once."""
    page = page_without_js
    open_generator(page, person)
    page.get_by_label("Retries").fill("-1")
    page.get_by_role("button", name="Update commands").click()
    expect(page.locator("#id_retry_error")).to_have_text("Retries must be a whole number from 0 to 100.")
    expect(page.get_by_text("Fix the fields marked above to see the commands.")).to_be_visible()
    page.get_by_label("Retries").fill("3")
    page.get_by_role("button", name="Update commands").click()
    assert "-retry=3" in page.get_by_label("Command for katalonc").input_value()
    page.get_by_role("button", name="Create a key for this command").click()
    assert "-retry=3" in page.get_by_label("Command for katalonc").input_value()
    assert "export KATALON_API_KEY=kat_" in page.get_by_label("Command wrapped in katalon-license").input_value()
    page.get_by_role("link", name="Dismiss").click()
    expect(page.locator(".new-key")).to_have_count(0)
    assert "-retry=3 " in page.get_by_label("Command for katalonc").input_value()
    assert "<your-api-key>" in page.get_by_label("Command for katalonc").input_value()
