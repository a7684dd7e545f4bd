"""The "Assign licenses" chooser: members without a KSE license, searched and paged on the server."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from licenses import actions
from licenses.models import LicensedUser
from organizations.models import Membership, User
from tests import factories

HTMX = {"HX-Request": "true"}


def assign_url(pool, **query):
    url = reverse("licenses_assign", args=[pool.organization.public_id, pool.product])
    return url + ("?" + "&".join(f"{key}={value}" for key, value in query.items()) if query else "")


def grant_url(pool):
    return reverse("licenses_grant", args=[pool.organization.public_id, pool.product])


def add_members(organization, names):
    users = User.objects.bulk_create(
        [User(email=f"{name.lower().replace(' ', '.')}@example.com", name=name, password="!") for name in names]
    )
    Membership.objects.bulk_create([Membership(organization=organization, user=user) for user in users])
    return users


def offered(response):
    """The names the chooser offers, in its order."""
    return [name for _id, name, _email in response.context["candidates"].object_list]


def test_the_chooser_offers_unlicensed_members_in_natural_order(owner_client, organization, kse_pool):
    """Member 2 comes before Member 10; licensed people, removed people and other organizations'
    people are not offered."""
    users = add_members(organization, ["Member 10", "Member 2", "member 1", "Member 11", "Licensed One"])
    actions.grant_licenses(pool=kse_pool, users=[users[4]], actor=None)
    Membership.objects.filter(user=users[3]).update(removed_at="2026-01-01T00:00:00Z")
    add_members(factories.OrganizationFactory(), ["Member 3"])
    response = owner_client.get(assign_url(kse_pool))
    assert response.status_code == 200
    assert offered(response) == ["member 1", "Member 2", "Member 10", "Olivia Owner"]
    assert "2 licenses left" in response.text
    assert "<html" in response.text  # a page of its own without JavaScript


def test_search_matches_name_or_email_and_pages_stay_searched(owner_client, organization, kse_pool):
    """Searching narrows on the server; the next-page link keeps the search."""
    add_members(organization, [f"Tester {n}" for n in range(1, 46)] + ["Zed Other"])
    response = owner_client.get(assign_url(kse_pool, q="tester"))
    assert offered(response)[:3] == ["Tester 1", "Tester 2", "Tester 3"]
    assert response.context["candidates"].paginator.count == 45
    assert response.context["candidates"].next_link.endswith("?q=tester&page=2")
    response = owner_client.get(assign_url(kse_pool, q="tester", page=3))
    assert offered(response) == ["Tester 41", "Tester 42", "Tester 43", "Tester 44", "Tester 45"]
    response = owner_client.get(assign_url(kse_pool, q="zed.other@"))
    assert offered(response) == ["Zed Other"]
    response = owner_client.get(assign_url(kse_pool, q="nobody-like-this"))
    assert offered(response) == []
    assert "No member without a license matches" in response.text


def test_a_search_too_long_says_so_and_a_bad_page_is_the_first(owner_client, organization, kse_pool):
    """Bad input is a message, never a 500."""
    response = owner_client.get(assign_url(kse_pool, q="x" * 300, page="abc"))
    assert response.status_code == 200
    assert "Search for at most 254 characters (you typed 300)." in response.text
    assert offered(response) == ["Olivia Owner"]


def test_htmx_gets_the_chooser_for_the_dialog_or_only_its_results(owner_client, organization, kse_pool):
    """Opening the dialog fetches the chooser (posting in place); a search fetches the results alone."""
    add_members(organization, ["Ada Lovelace"])
    response = owner_client.get(assign_url(kse_pool), headers=HTMX | {"HX-Target": "assign-dialog-content"})
    assert response.text.lstrip().startswith('<section id="chooser"')
    assert f'hx-post="{grant_url(kse_pool)}"' in response.text
    response = owner_client.get(assign_url(kse_pool, q="ada"), headers=HTMX | {"HX-Target": "chooser-results"})
    assert response.text.lstrip().startswith('<div id="chooser-results">')
    assert "Ada Lovelace" in response.text and "Olivia Owner" not in response.text


def test_an_over_quota_grant_comes_back_to_the_chooser_with_the_people_still_ticked(owner_client, kse_pool, members):
    """Nothing is granted; the refusal names the limit; with htmx the chooser replaces itself in the dialog."""
    chosen = {"users": [m.pk for m in members[:4]]}
    response = owner_client.post(grant_url(kse_pool), chosen, headers=HTMX)
    assert response["HX-Retarget"] == "#chooser" and response["HX-Reswap"] == "outerHTML"
    assert "Only 3 of 3 licenses are available in Acme QA" in response.text
    assert [user_id for user_id, _name, _email in response.context["chosen"]] == sorted(
        [m.pk for m in members[:4]], key=lambda pk: (User.objects.get(pk=pk).sort_key, pk)
    )
    assert response.text.count(" checked>") == 4
    response = owner_client.post(grant_url(kse_pool), chosen)
    assert response.status_code == 200 and "<html" in response.text
    assert "Only 3 of 3 licenses are available in Acme QA" in response.text
    assert not LicensedUser.objects.exists()


def test_members_and_runtime_engine_have_no_chooser(member_client, organization, kse_pool, re_pool):
    """Only owners and admins assign; RE licenses are not assigned to people."""
    assert member_client.get(assign_url(kse_pool)).status_code == 403
    owner_client = member_client
    owner_client.force_login(Membership.objects.get(organization=organization, role="owner").user)
    assert owner_client.get(assign_url(re_pool)).status_code == 404


def test_a_search_answers_its_results_without_counting_the_licenses_left(
    owner_client, organization, kse_pool, django_assert_num_queries
):
    """Each keystroke of the search asks for the results alone, which do not show the licenses left:
    one query fewer than the whole chooser."""
    add_members(organization, [f"Member {n}" for n in range(5)])
    with CaptureQueriesContext(connection) as whole:
        owner_client.get(assign_url(kse_pool, q="member"), headers=HTMX)
    with django_assert_num_queries(len(whole.captured_queries) - 1):
        response = owner_client.get(assign_url(kse_pool, q="member"), headers=HTMX | {"HX-Target": "chooser-results"})
    assert response.status_code == 200 and "Member 1" in response.text


@pytest.mark.parametrize("htmx", [False, True], ids=["page", "htmx"])
def test_the_chooser_takes_the_same_queries_for_twenty_members_or_two_thousand(
    owner_client, organization, kse_pool, htmx, django_assert_max_num_queries
):
    """Its page and its count are one query each whatever the size, and a refused grant of fifty
    people costs what one of five does: never a query per member or per person ticked."""
    add_members(organization, [f"Small {n}" for n in range(20)])
    headers = HTMX | {"HX-Target": "chooser-results"} if htmx else {}
    with CaptureQueriesContext(connection) as small_page:
        owner_client.get(assign_url(kse_pool, q="a"), headers=headers)
    with CaptureQueriesContext(connection) as small_refusal:
        owner_client.post(grant_url(kse_pool), {"users": [u.pk for u in User.objects.all()[:5]]}, headers=HTMX)
    add_members(organization, [f"Big {n}" for n in range(2000)])
    with django_assert_max_num_queries(len(small_page.captured_queries)):
        response = owner_client.get(assign_url(kse_pool, q="a"), headers=headers)
    assert response.context["candidates"].paginator.count_exceeds_bound
    with django_assert_max_num_queries(len(small_refusal.captured_queries)):
        response = owner_client.post(
            grant_url(kse_pool), {"users": [u.pk for u in User.objects.all()[:50]]}, headers=HTMX
        )
    assert "Only 3 of 3 licenses are available" in response.text
