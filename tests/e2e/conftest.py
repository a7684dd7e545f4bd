"""Headless Chromium (Debian's) driven by Playwright against the live test server."""

import os
import shutil

import pytest

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


@pytest.fixture
def page(browser, live_server):
    """A page with JavaScript on; the test server's URL is `page.base_url`."""
    context = _context(browser, javascript=True)
    page = context.new_page()
    page.base_url = live_server.url
    yield page
    context.close()


@pytest.fixture
def page_without_js(browser, live_server):
    context = _context(browser, javascript=False)
    page = context.new_page()
    page.base_url = live_server.url
    yield page
    context.close()


@pytest.fixture(params=[True, False], ids=["js", "no-js"])
def any_page(request, browser, live_server):
    """The same test with JavaScript on and off: every page must work as a plain form post."""
    context = _context(browser, javascript=request.param)
    page = context.new_page()
    page.base_url = live_server.url
    page.javascript = request.param
    yield page
    context.close()


def sign_in(page, email, password=PASSWORD):
    page.goto(page.base_url + "/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
