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
