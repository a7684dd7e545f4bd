import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from organizations.audit import Action
from organizations.models import AuditEvent, Organization
from tests import factories

pytestmark = pytest.mark.django_db


def run(*args):
    from io import StringIO

    out = StringIO()
    call_command("create_organization", *args, stdout=out)
    return out.getvalue().splitlines()


def test_creates_the_organization_and_the_owners_account_with_a_set_password_link(client):
    """The new owner has no password yet; the printed link sets one, once. The id is alone on the last line."""
    lines = run("Acme QA", "--owner", "Olga@Example.com")
    organization = Organization.objects.get()
    assert lines[-1] == organization.public_id
    owner = get_user_model().objects.get(email="olga@example.com")
    assert not owner.has_usable_password()
    assert organization.memberships.get().user == owner and organization.memberships.get().role == "owner"
    assert AuditEvent.objects.filter(action=Action.ORGANIZATION_CREATED, organization=organization).exists()

    [link] = [line.strip() for line in lines if "/accounts/reset/" in line]
    assert link.startswith("http://127.0.0.1:8000/accounts/reset/")
    path = link.removeprefix("http://127.0.0.1:8000")
    form_page = client.get(path, follow=True)
    assert b"Set your password" in form_page.content
    response = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "a-fine-new-password", "new_password2": "a-fine-new-password"},
        follow=True,
    )
    assert b"Your password is set" in response.content
    owner.refresh_from_db()
    assert owner.check_password("a-fine-new-password")
    assert b"cannot be used" in client.get(path, follow=True).content


def test_an_existing_owner_gets_no_link(owner):
    """The account exists: only the organization is created."""
    lines = run("Second", "--owner", owner.email, "--base-url", "https://licenses.example.com")
    assert not any("/accounts/reset/" in line for line in lines)
    assert Organization.objects.get(name="Second").memberships.get().user == owner


def test_the_owner_name_names_a_new_account_and_fills_a_nameless_one(db):
    """--owner-name is what pages show for a new owner; an existing account keeps a name it has."""
    run("Acme", "--owner", "olga@example.com", "--owner-name", "  Olga Owner ")
    assert get_user_model().objects.get(email="olga@example.com").display_name == "Olga Owner"
    named = factories.UserFactory(name="Kept Name")
    run("Second", "--owner", named.email, "--owner-name", "Other Name")
    named.refresh_from_db()
    assert named.name == "Kept Name"
    nameless = factories.UserFactory(name="")
    run("Third", "--owner", nameless.email, "--owner-name", "Now Named")
    nameless.refresh_from_db()
    assert nameless.name == "Now Named" and nameless.sort_key == "now named"


def test_the_link_uses_the_given_base_url(db):
    """--base-url sets where the link points."""
    lines = run("Acme", "--owner", "x@example.com", "--base-url", "https://licenses.example.com/")
    assert any(line.strip().startswith("https://licenses.example.com/accounts/reset/") for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["  ", "--owner", "a@example.com"], "must not be empty"),
        (["Acme", "--owner", "not-an-email"], "not a valid email address"),
        (["x" * 201, "--owner", "a@example.com"], "longer than 200"),
        (["Acme", "--owner", "a@example.com", "--base-url", "ftp://x"], r"not an http\(s\) address"),
        (["Acme", "--owner", "a@example.com", "--owner-name", "n" * 151], "--owner-name is longer than 150"),
    ],
)
def test_bad_arguments_are_one_line_and_change_nothing(db, args, message):
    """CommandError with one line; no organization, no account."""
    with pytest.raises(CommandError, match=message) as error:
        run(*args)
    assert "\n" not in str(error.value)
    assert not Organization.objects.exists()
    assert not get_user_model().objects.exists()


def test_createsuperuser_asks_for_the_email(db, monkeypatch):
    """Operators are made with their email and sign in with it."""
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", factories.PASSWORD)
    call_command("createsuperuser", "--no-input", "--email", "Root@Example.com", verbosity=0)
    operator = get_user_model().objects.get()
    assert operator.email == "root@example.com"
    assert operator.is_superuser and operator.check_password(factories.PASSWORD)


def test_password_reset_reaches_accounts_made_without_a_password(client, mailoutbox):
    """An operator-made owner whose link ran out can ask for a new one."""
    run("Acme", "--owner", "late@example.com")
    client.post("/accounts/password_reset/", {"email": "late@example.com"})
    assert len(mailoutbox) == 1
    assert "/accounts/reset/" in mailoutbox[0].body
