"""The active members list at scale: search, role and license filters, pages, one menu per row."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from licenses import actions as license_actions
from organizations.models import Membership, Role, User
from tests import factories
from tests.organizations.conftest import membership_of

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def members_url(organization, **query):
    url = reverse("members", args=[organization.public_id])
    return url + ("?" + "&".join(f"{key}={value}" for key, value in query.items()) if query else "")


def add_members(organization, names, role=Role.MEMBER):
    users = User.objects.bulk_create(
        [User(email=f"{name.lower().replace(' ', '.')}@example.com", name=name, password="!") for name in names]
    )
    Membership.objects.bulk_create([Membership(organization=organization, user=user, role=role) for user in users])
    return users


def listed(response):
    return [m.user.display_name for m in response.context["page"].object_list]


def test_members_sort_naturally_within_each_role(owner_client, organization):
    """Owner first, then admins, then members; Member 2 before Member 10; a nameless person by email."""
    add_members(organization, ["Member 10", "Member 2", "Member 1", "Member 11"])
    add_members(organization, ["Admin 9", "Admin 10"], role=Role.ADMIN)
    nameless = User.objects.create_user(email="member 3@example.com")  # sorts by its email
    Membership.objects.create(organization=organization, user=nameless)
    response = owner_client.get(members_url(organization))
    assert listed(response) == [
        "Olivia Owner",
        "Admin 9",
        "Admin 10",
        "Member 1",
        "Member 2",
        "member 3@example.com",
        "Member 10",
        "Member 11",
    ]
    row = re.search(rf'<tr id="member-{membership_of(nameless, organization).pk}">.*?</td>', response.text, re.S)
    assert "—" not in row.group() and "member 3@example.com" in row.group()


def test_search_and_filters_narrow_the_list_and_say_how_many_match(owner_client, organization):
    """By name or email, by role, by KSE license; the heading keeps the whole count."""
    users = add_members(organization, ["Ada Lovelace", "Alan Turing", "Grace Hopper"])
    add_members(organization, ["Ada Admin"], role=Role.ADMIN)
    kse = factories.LicensePoolFactory(organization=organization, product="KSE", quota=5)
    license_actions.grant_licenses(pool=kse, users=[users[1]], actor=None)

    response = owner_client.get(members_url(organization, q="ada"))
    assert listed(response) == ["Ada Admin", "Ada Lovelace"]
    assert response.context["active_count"] == 5
    assert "2 of 5 match." in response.text
    assert listed(owner_client.get(members_url(organization, q="GRACE.HOPPER@"))) == ["Grace Hopper"]
    assert listed(owner_client.get(members_url(organization, q="ada", role="member"))) == ["Ada Lovelace"]
    assert listed(owner_client.get(members_url(organization, role="owner"))) == ["Olivia Owner"]
    assert listed(owner_client.get(members_url(organization, license="kse"))) == ["Alan Turing"]
    assert "Alan Turing" not in listed(owner_client.get(members_url(organization, license="none")))
    response = owner_client.get(members_url(organization, q="nobody"))
    assert "No active member matches." in response.text


def test_bad_filters_are_ignored_or_explained_never_a_500(owner_client, organization):
    """An unknown role or license value filters nothing; an overlong search says its limit."""
    response = owner_client.get(members_url(organization, role="emperor", license="maybe", page="x"))
    assert response.status_code == 200 and listed(response) == ["Olivia Owner"]
    response = owner_client.get(members_url(organization, q="y" * 300))
    assert response.status_code == 200
    assert "Search for at most 254 characters (you typed 300)." in response.text


def test_htmx_filtering_returns_only_the_list(owner_client, organization):
    """The filter form swaps the list in place; the rest of the page is not rendered again."""
    add_members(organization, ["Ada Lovelace"])
    response = owner_client.get(members_url(organization, q="ada"), headers=HTMX | {"HX-Target": "active-list"})
    assert response.text.lstrip().startswith('<div id="active-list">')
    assert "Ada Lovelace" in response.text and "Pending invitations" not in response.text


def test_each_row_has_one_menu_with_the_role_change_it_offers(owner_client, organization, owner, admin_user):
    """A member's menu offers Make admin, an admin's Make member, both offer Remove; the owner has no menu."""
    add_members(organization, ["Mia Member"])
    page = owner_client.get(members_url(organization)).text
    assert page.count('<details class="row-menu">') == 2
    assert 'Make admin<span class="visually-hidden"> mia.member@example.com' in page
    assert f'Make member<span class="visually-hidden"> {admin_user.email}' in page
    assert f'Actions<span class="visually-hidden"> for {owner.email}' not in page
    assert '<select name="role" id="role-' not in page  # no drop-down repeated per row


def test_a_rows_post_without_javascript_returns_to_the_same_filtered_page(owner_client, organization):
    """The menu's forms carry the list's search, filters and page; the redirect brings them back."""
    [ada] = add_members(organization, ["Ada Lovelace"])
    page = owner_client.get(members_url(organization, q="ada", role="member")).text
    assert '<input type="hidden" name="list-q" value="ada">' in page
    assert '<input type="hidden" name="list-role" value="member">' in page
    response = owner_client.post(
        reverse("member_change_role", args=[organization.public_id, membership_of(ada, organization).pk]),
        {"role": "admin", "list-q": "ada", "list-role": "member", "list-page": "1", "list-license": "bogus"},
    )
    assert response.status_code == 302
    assert response.url == members_url(organization, q="ada", role="member", page=1)
    assert membership_of(ada, organization).role == Role.ADMIN


@pytest.mark.parametrize(
    "query", [{}, {"q": "member"}, {"role": "member", "license": "none"}], ids=["all", "search", "filters"]
)
def test_the_list_takes_the_same_queries_for_ten_members_or_a_thousand(
    owner_client, organization, query, django_assert_max_num_queries
):
    """Searched and filtered too, the page is a fixed number of queries whatever the size."""
    factories.LicensePoolFactory(organization=organization, product="KSE", quota=5)
    add_members(organization, [f"Member {n}" for n in range(10)])
    with CaptureQueriesContext(connection) as small:
        owner_client.get(members_url(organization, **query))
    add_members(organization, [f"Member {n}" for n in range(10, 1000)])
    with django_assert_max_num_queries(len(small.captured_queries)):
        response = owner_client.get(members_url(organization, **query))
    assert len(response.context["page"].object_list) == 50
    with django_assert_max_num_queries(9 + bool(query)):  # the pinned figure of the unfiltered page
        owner_client.get(members_url(organization, **query))
