"""Issue 10's server side: dangerous actions ask first and only a POST acts, ownership transfer
re-checks the name and the password, and a value past a field's limit is refused, never cut."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from licenses.models import LicensedUser, OfflineLicense
from organizations.forms import InviteForm, TransferOwnershipForm
from organizations.models import Invitation, Membership, Role
from sessions_app.models import ApiKey, EngineSession, Machine
from tests import factories
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
LONG_ID = "m" * 129


def pool_url(name, pool, *args):
    return reverse(name, args=[pool.organization.public_id, pool.product, *args])


@pytest.fixture
def kse_pool(organization):
    return factories.LicensePoolFactory(organization=organization, product="KSE", quota=5)


@pytest.fixture
def live_session(kse_pool, member_user):
    LicensedUser.objects.create(pool=kse_pool, user=member_user, granted_by=None)
    machine = factories.MachineFactory(pool=kse_pool, machine_id="lab-07", user=member_user)
    return factories.EngineSessionFactory(pool=kse_pool, machine=machine, user=member_user)


# Confirmation: a GET asks, a POST acts.


def test_each_dangerous_get_asks_and_changes_nothing(owner_client, organization, kse_pool, live_session, member_user):
    """End session, deactivate, revoke and remove answer a GET with what will happen and a form that posts."""
    membership = Membership.objects.get(organization=organization, user=member_user)
    asks = {
        pool_url("licenses_end_session", kse_pool, live_session.public_id): "End this session?",
        pool_url("licenses_deactivate_machine", kse_pool, live_session.machine.pk): "Deactivate this machine?",
        pool_url("licenses_revoke", kse_pool) + f"?users={member_user.pk}": "Withdraw this license?",
        reverse("member_remove", args=[organization.public_id, membership.pk]): f"Remove {member_user.display_name}?",
    }
    for url, title in asks.items():
        page = owner_client.get(url)
        assert page.status_code == 200, url
        assert title in page.text
        assert f'action="{url.split("?")[0]}"' in page.text
        fragment = owner_client.get(url, headers=HTMX)
        assert fragment["HX-Retarget"] == "#confirm-slot"
        assert "<html" not in fragment.text
    assert EngineSession.objects.get(pk=live_session.pk).ended_at is None
    assert Machine.objects.registered().filter(pk=live_session.machine.pk).exists()
    assert LicensedUser.objects.active().filter(pool=kse_pool, user=member_user).exists()
    assert Membership.objects.get(pk=membership.pk).is_active


def test_the_confirmation_names_the_session_and_the_machine(owner_client, kse_pool, live_session):
    """The consequence says whose engine on which machine stops."""
    page = owner_client.get(pool_url("licenses_end_session", kse_pool, live_session.public_id)).text
    assert "lab-07" in page and live_session.user.display_name in page


def test_revoking_nobody_is_refused_beside_the_list(owner_client, kse_pool):
    """Revoke selected with nothing ticked: the list says so; no confirmation is asked."""
    response = owner_client.get(pool_url("licenses_revoke", kse_pool), headers=HTMX)
    assert response["HX-Retarget"] == "#licensed-users"
    assert "Choose at least one licensed user." in response.text


def test_an_offline_license_states_its_cost_and_needs_the_confirmed_post(owner_client, kse_pool):
    """The form's post shows the cost from the pool's figures; only the confirmed post creates."""
    kse_pool.expires_at = timezone.now().replace(year=2030, month=12, day=31, hour=23, minute=59)
    kse_pool.save()
    data = {"machine_id": "air-gapped-7", "expires_on": kse_pool.expires_at.date().isoformat()}
    response = owner_client.post(pool_url("licenses_offline_create", kse_pool), data)
    assert "It takes 1 of 5 KSE licenses until 31 Dec 2030 (UTC), and cannot be revoked." in response.text
    assert "Available now: 5 of 5; after this: 4." in response.text
    assert not OfflineLicense.objects.exists()
    owner_client.post(pool_url("licenses_offline_create", kse_pool), data | {"confirmed": "yes"})
    assert OfflineLicense.objects.get().machine_id == "air-gapped-7"


def test_an_api_key_is_revoked_only_by_the_post(member_client, member_user):
    """The GET asks; the POST revokes."""
    api_key = factories.ApiKeyFactory(user=member_user, name="Laptop")
    url = reverse("api_key_revoke", args=[api_key.pk])
    assert "The key Laptop" in member_client.get(url).text
    assert ApiKey.objects.get(pk=api_key.pk).revoked_at is None
    member_client.post(url)
    assert ApiKey.objects.get(pk=api_key.pk).revoked_at is not None


# Ownership transfer


def transfer_form(organization, owner, **data):
    fields = {"email": "", "organization_name": organization.name, "password": PASSWORD} | data
    return TransferOwnershipForm(fields, organization=organization, user=owner)


def test_transfer_needs_the_organizations_name_typed_exactly(organization, owner, admin_user):
    """A wrong or partial name is refused, naming what to type."""
    form = transfer_form(organization, owner, email=admin_user.email, organization_name=organization.name[:-1])
    assert not form.is_valid()
    assert form.errors["organization_name"] == [f"Type the organization's name, {organization.name}, exactly as shown."]
    assert transfer_form(organization, owner, email=admin_user.email).is_valid()


def test_transfer_needs_the_owners_own_password(organization, owner, admin_user):
    """Anyone at the open session's keyboard still needs the password; the admin's is not it either."""
    form = transfer_form(organization, owner, email=admin_user.email, password="not-it")
    assert not form.is_valid()
    assert form.errors["password"] == ["That is not your password."]


def test_a_refused_transfer_changes_nothing(owner_client, organization, owner, admin_user):
    """Through the page: a wrong password leaves the owner the owner."""
    url = reverse("ownership_transfer", args=[organization.public_id])
    data = {"email": admin_user.email, "organization_name": organization.name, "password": "wrong"}
    response = owner_client.post(url, data)
    assert "That is not your password." in response.text
    assert Membership.objects.get(organization=organization, user=owner).role == Role.OWNER


# Limits: stated, refused past, never cut.


def test_a_machine_id_past_128_characters_is_refused_not_cut(owner_client, kse_pool):
    """129 characters: a message with the length, and no license for the first 128."""
    data = {"machine_id": LONG_ID, "expires_on": (timezone.now() + timedelta(days=3)).date().isoformat()}
    for confirmed in ({}, {"confirmed": "yes"}):
        response = owner_client.post(pool_url("licenses_offline_create", kse_pool), data | confirmed)
        assert "Ensure this value has at most 128 characters (it has 129)." in response.text
    assert not OfflineLicense.objects.exists()


def test_limits_are_stated_in_the_form_without_a_cutting_maxlength(owner_client, kse_pool):
    """The page carries each limit as data-maxlength; no maxlength attribute cuts a paste."""
    page = owner_client.get(pool_url("licenses_product", kse_pool)).text
    assert 'data-maxlength="128"' in page
    assert " maxlength=" not in page
    members_page = owner_client.get(reverse("members", args=[kse_pool.organization.public_id])).text
    assert f'data-maxlength="{InviteForm.base_fields["emails"].max_length}"' in members_page
    assert " maxlength=" not in members_page


def test_an_error_never_repeats_a_huge_value(owner_client, organization):
    """A 10,000-character 'email' is named by its first 60 characters and an ellipsis."""
    response = owner_client.post(reverse("member_invite", args=[organization.public_id]), {"emails": "x" * 10_000})
    assert "x" * 59 + "… is not a valid email address." in response.text
    assert "x" * 61 not in response.text.replace("x" * 10_000, "")
    assert not Invitation.objects.exists()


def test_an_invitation_list_past_its_limit_is_refused(organization):
    """Past the field's limit the form says how long it was."""
    form = InviteForm({"emails": "a@example.com " * 3000, "role": "member"})
    assert not form.is_valid()
    assert "at most 25600 characters" in form.errors["emails"][0]


# Wording


def test_choosing_the_role_someone_already_has_says_nothing_changed(owner_client, organization, member_user):
    """Not “X is now member”."""
    membership = Membership.objects.get(organization=organization, user=member_user)
    url = reverse("member_change_role", args=[organization.public_id, membership.pk])
    response = owner_client.post(url, {"role": "member"}, headers=HTMX)
    assert f"Nothing changed: {member_user.display_name} is already member." in response.text
    assert "is now member" not in response.text
