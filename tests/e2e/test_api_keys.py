"""A person makes a key and a command in the browser, and the engine API honours it until revoked."""

import json
import re
import shlex
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect

from tests import factories
from tests.e2e.conftest import confirm, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def call_api(base_url, raw_key, path, body):
    request = urllib.request.Request(
        base_url + "/api/v1/" + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def person():
    organization = factories.OrganizationFactory(name="Acme QA")
    factories.LicensePoolFactory(organization=organization, product="RE", quota=2)
    return factories.MembershipFactory(organization=organization).user, organization


def test_a_key_from_the_generator_works_until_it_is_revoked(page, person):
    """Create a key, copy the generated command, run it against the API, revoke the key: 401."""
    user, organization = person
    sign_in(page, user.email)
    page.goto(page.base_url + "/api-keys/")
    page.get_by_label("Name").fill("Jenkins agents")
    page.get_by_role("combobox", name="Organization").select_option(label="Acme QA")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Your new key “Jenkins agents”")).to_be_visible()
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    expect(page.get_by_role("cell", name="Jenkins agents", exact=True)).to_be_visible()

    page.get_by_role("link", name="Command generator").click()
    command = page.get_by_label("Command for katalonc")
    # The page rebuilds the command as the person types.
    page.get_by_label("Project path").fill("/builds/My Shop/shop.prj")
    expect(command).to_have_value(re.compile(r'-projectPath="/builds/My Shop/shop.prj"'))
    page.get_by_label("Test suite path").fill("Test Suites/Checkout")
    page.get_by_label("Browser").select_option("Firefox (headless)")
    page.get_by_label("Release the previous session").check()
    expect(command).to_have_value(re.compile(r"-licenseRelease=true"))
    expect(command).to_have_value(re.compile(r'-browserType="Firefox \(headless\)"'))
    page.get_by_role("button", name="Create a key for this command").click()
    expect(page.get_by_role("heading", name=re.compile("New key “katalonc for Acme QA"))).to_be_visible()
    expect(command).to_have_value(re.compile(r"-apiKey=kat_"))
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=page.base_url)
    page.get_by_role("button", name="Copy katalonc command").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == command.input_value()

    arguments = dict(part.split("=", 1) for part in shlex.split(copied)[3:])
    assert arguments["-projectPath"] == "/builds/My Shop/shop.prj"
    assert arguments["-orgID"] == organization.public_id
    assert arguments["-serverUrl"] == page.base_url
    status, body = call_api(
        arguments["-serverUrl"],
        arguments["-apiKey"],
        "engine/activate",
        {"product": "RE", "machine_id": "ci-agent-1", "org_id": arguments["-orgID"]},
    )
    assert status == 201, body
    assert body["organization"]["name"] == "Acme QA"

    page.locator(".account-menu > summary").click()  # API keys are in the account menu
    page.get_by_role("banner").get_by_role("link", name="API keys").click()
    page.get_by_role("button", name=re.compile(r"^Revoke katalonc for Acme QA")).click()
    confirm(page, "Revoke key")
    expect(page.get_by_text("It no longer works.")).to_be_visible()
    status, body = call_api(
        page.base_url, arguments["-apiKey"], "engine/activate", {"product": "RE", "machine_id": "ci-agent-2"}
    )
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"


def test_keys_are_made_and_revoked_with_or_without_javascript(any_page, person):
    """The API keys page works as plain form posts too, and a revoked key is refused."""
    user, _ = person
    page = any_page
    sign_in(page, user.email)
    page.goto(page.base_url + "/api-keys/")
    page.get_by_label("Name").fill("Laptop")
    page.get_by_role("button", name="Create key").click()
    raw_key = page.locator("#new-api-key").inner_text()
    assert raw_key.startswith("kat_")
    status, _ = call_api(page.base_url, raw_key, "engine/activate", {"product": "RE", "machine_id": "laptop"})
    assert status == 201
    page.get_by_role("button", name="Revoke Laptop").click()
    confirm(page, "Revoke key")
    expect(page.get_by_text("Revoked the key Laptop")).to_be_visible()
    expect(page.get_by_role("button", name="Revoke Laptop")).to_have_count(0)
    status, body = call_api(page.base_url, raw_key, "engine/activate", {"product": "RE", "machine_id": "laptop"})
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
