import pytest

from tests.e2e.conftest import sign_in
from tests.factories import OrganizationFactory, UserFactory


@pytest.mark.django_db(transaction=True)
def test_a_person_signs_in_and_out(any_page):
    """Sign-in works over the test server's plain HTTP (secure cookies on localhost), with and without JavaScript."""
    person = UserFactory(email="olivia@example.com")
    OrganizationFactory(owner=person, name="Acme QA")
    sign_in(any_page, "olivia@example.com")
    any_page.get_by_text(person.display_name, exact=True).click()  # the account menu
    sign_out = any_page.get_by_role("button", name="Sign out")
    assert sign_out.is_visible()
    sign_out.click()
    any_page.wait_for_load_state()
    assert any_page.get_by_role("button", name="Sign in").is_visible()


@pytest.mark.django_db(transaction=True)
def test_a_wrong_password_is_refused_with_a_message(page):
    """A wrong password keeps the person on the sign-in page and says why."""
    UserFactory(email="olivia@example.com")
    sign_in(page, "olivia@example.com", password="not-the-password")
    assert page.get_by_role("button", name="Sign in").is_visible()
    assert "correct email" in page.content().lower()


@pytest.mark.django_db(transaction=True)
def test_repeated_wrong_passwords_lock_the_account_and_the_page_says_so(page):
    """After SIGN_IN_FAILURE_LIMIT (5) wrong passwords the sign-in page itself says that signing in is
    locked and for how long, and even the right password is refused until then."""
    UserFactory(email="olivia@example.com")
    for _ in range(4):
        sign_in(page, "olivia@example.com", password="not-the-password")
        assert "correct email" in page.content().lower()
    sign_in(page, "olivia@example.com", password="not-the-password")
    alert = page.get_by_role("alert")
    assert "signing in is locked for 15 minutes" in alert.inner_text()
    assert page.get_by_role("button", name="Sign in").is_visible()
    assert page.get_by_label("Email").input_value() == "olivia@example.com"
    sign_in(page, "olivia@example.com")
    assert "signing in is locked" in page.get_by_role("alert").inner_text()
    assert not page.get_by_role("button", name="Sign out (olivia@example.com)").is_visible()
