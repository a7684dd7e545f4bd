"""A person's own account: the header's menu, the profile page, and the natural sort key of names."""

import importlib

import pytest
from django.urls import reverse

from organizations.models import User, natural_sort_key
from tests import factories

pytestmark = pytest.mark.django_db


def test_the_header_has_an_account_menu_with_profile_keys_and_a_sign_out_post(owner_client, organization):
    """Signing out is a POST form with its CSRF token, inside the menu beside the profile and the API keys."""
    page = owner_client.get(reverse("members", args=[organization.public_id])).text
    menu = page[page.index('<details class="account-menu">') : page.index("</details>", page.index("account-menu"))]
    assert "Olivia Owner" in menu
    assert f'href="{reverse("account")}"' in menu and f'href="{reverse("api_keys")}"' in menu
    assert f'<form method="post" action="{reverse("logout")}">' in menu and "csrfmiddlewaretoken" in menu


def test_a_person_sets_their_name_on_the_profile(client):
    """The name is saved, shown in the menu, and sorts people by it from then on."""
    person = factories.UserFactory(name="", email="nameless@example.com")
    client.force_login(person)
    page = client.get(reverse("account")).text
    assert "nameless@example.com" in page and reverse("password_change") in page
    response = client.post(reverse("account"), {"name": "  Nina 7 Nameless "}, follow=True)
    assert "You are shown as Nina 7 Nameless." in response.text
    person.refresh_from_db()
    assert person.name == "Nina 7 Nameless" and person.sort_key == "nina 017 nameless"
    response = client.post(reverse("account"), {"name": ""}, follow=True)
    assert "You are shown by your email address." in response.text


def test_a_name_too_long_is_refused_with_its_limit(client):
    """A clear message and a 400; the name does not change."""
    person = factories.UserFactory(name="Kept")
    client.force_login(person)
    response = client.post(reverse("account"), {"name": "n" * 151})
    assert response.status_code == 400
    assert "Use at most 150 characters (you typed 151)." in response.text
    person.refresh_from_db()
    assert person.name == "Kept"


def test_the_profile_needs_a_sign_in_and_the_password_change_leads_back(client):
    """Signed out: the sign-in page. Signed in: Django's password change, with a way back to the profile."""
    assert client.get(reverse("account"))["Location"].startswith(reverse("login"))
    client.force_login(factories.UserFactory())
    assert reverse("account") in client.get(reverse("password_change")).text


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["Member 10", "Member 2", "member 1", "Member 11"], ["member 1", "Member 2", "Member 10", "Member 11"]),
        (["a10b2", "a9b10", "a10b10", "a009b3"], ["a009b3", "a9b10", "a10b2", "a10b10"]),
        (["Z", "ä", "b"], ["b", "Z", "ä"]),  # case folded; beyond ASCII by code point, the same on every database
    ],
)
def test_the_sort_key_orders_numbers_by_value(names, expected):
    assert sorted(names, key=natural_sort_key) == expected


def test_the_sort_key_is_kept_on_save_bulk_create_and_filled_by_the_migration(db):
    """Whichever way a person is written, the key follows the display name; the migration fills old rows."""
    person = User.objects.create_user(email="p@example.com", name="Member 2")
    assert person.sort_key == "member 012"
    person.name = "Member 10"
    person.save(update_fields=["name"])
    person.refresh_from_db()
    assert person.sort_key == "member 0210"
    [bulk] = User.objects.bulk_create([User(email="bulk@example.com", password="!")])
    assert User.objects.get(pk=bulk.pk).sort_key == "bulk@example.com"
    User.objects.update(sort_key="")
    migration = importlib.import_module("organizations.migrations.0003_user_sort_key")
    migration.fill_sort_keys(django_apps(), None)
    assert dict(User.objects.values_list("email", "sort_key")) == {
        "p@example.com": "member 0210",
        "bulk@example.com": "bulk@example.com",
    }


def django_apps():
    from django.apps import apps

    return apps
