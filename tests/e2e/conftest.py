"""Headless Chromium (Debian's) driven by Playwright against the live test server."""

import os
import shutil

import pytest
from playwright.sync_api import expect

from tests.conftest import IN_CI
from tests.factories import PASSWORD

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_HOW = "needs Chromium: apt-get install -y chromium (Playwright drives Debian's build at /usr/bin/chromium)"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def browser():
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        if IN_CI:
            pytest.fail(f"Chromium is missing in CI: {CHROMIUM_HOW}")
        pytest.skip(CHROMIUM_HOW)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _context(browser, *, javascript):
    context = browser.new_context(java_script_enabled=javascript)
    context.set_default_timeout(10_000)
    return context


def _watch_for_policy_violations(page):
    """Collect what the browser refused under the Content-Security-Policy: a page that needs an
    inline script or style to work is broken in production, so such a refusal fails the test."""
    violations = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text)
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
    return violations


def _open_page(browser, live_server, *, javascript):
    context = _context(browser, javascript=javascript)
    page = context.new_page()
    page.base_url = live_server.url
    page.javascript = javascript
    violations = _watch_for_policy_violations(page)
    yield page
    context.close()
    assert not violations, f"Content-Security-Policy refused: {violations}"


@pytest.fixture
def page(browser, live_server):
    """A page with JavaScript on; the test server's URL is `page.base_url`."""
    yield from _open_page(browser, live_server, javascript=True)


@pytest.fixture
def page_without_js(browser, live_server):
    yield from _open_page(browser, live_server, javascript=False)


@pytest.fixture(params=[True, False], ids=["js", "no-js"])
def any_page(request, browser, live_server):
    """The same test with JavaScript on and off (`page.javascript`): every page must work as a
    plain form post too."""
    yield from _open_page(browser, live_server, javascript=request.param)


def sign_in(page, email, password=PASSWORD):
    page.goto(page.base_url + "/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def confirm(page, button):
    """Answer the confirmation a dangerous button asks (organizations/confirm.py): in the page's
    dialog with JavaScript, on a page of its own without."""
    scope = page.get_by_role("dialog") if page.javascript else page.locator("main")
    expect(scope.get_by_role("heading", level=1)).to_be_visible()
    scope.get_by_role("button", name=button, exact=True).click()
    if not page.javascript:
        page.wait_for_load_state()
