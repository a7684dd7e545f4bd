"""The RE tab's line: who waits, on which machine, since when and in which position; owners and
admins take an engine out of it (in place with htmx, as a plain post without), members see only
their own places."""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.functions import Now
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from organizations.audit import Action
from organizations.models import AuditEvent
from sessions_app.models import QueueTicket
from tests import factories

HTMX = {"HX-Request": "true"}


def line_url(pool):
    return reverse("licenses_product", args=[pool.organization.public_id, pool.product])


def remove_url(ticket):
    return reverse(
        "licenses_remove_from_line", args=[ticket.pool.organization.public_id, ticket.pool.product, ticket.public_id]
    )


@pytest.fixture
def line(re_pool, members):
    """Three engines waiting, in this order, and one that stopped polling (not in line)."""
    waiting = [
        factories.QueueTicketFactory(pool=re_pool, user=members[n], machine_id=f"ci-agent-{n}") for n in range(3)
    ]
    factories.QueueTicketFactory(pool=re_pool, user=members[3], machine_id="gone", poll_before=Now())
    return waiting


def test_the_line_shows_who_waits_where_and_in_which_position(admin_client, re_pool, line):
    response = admin_client.get(line_url(re_pool))
    assert response.status_code == 200
    assert [(t.position, t.machine_id) for t in response.context["line"]] == [
        (1, "ci-agent-0"),
        (2, "ci-agent-1"),
        (3, "ci-agent-2"),
    ]
    html = response.content.decode()
    assert "Waiting for a license" in html
    assert line[0].user.display_name in html and "ci-agent-2" in html
    assert "gone" not in html
    assert html.count("Remove from line") == 3


def test_an_admin_removes_an_engine_in_place_and_the_line_moves_up(admin_client, admin_user, re_pool, line):
    response = admin_client.post(remove_url(line[0]), headers=HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.strip().startswith('<section id="queue-line"')
    assert "Took ci-agent-0 of" in html
    assert [(t.position, t.machine_id) for t in response.context["line"]] == [(1, "ci-agent-1"), (2, "ci-agent-2")]
    assert QueueTicket.objects.get(pk=line[0].pk).outcome == "removed"
    event = AuditEvent.objects.get(action=Action.QUEUE_TICKET_REMOVED)
    assert event.actor == admin_user
    again = admin_client.post(remove_url(line[0]), headers=HTMX)
    assert "was no longer waiting" in again.content.decode()
    assert AuditEvent.objects.filter(action=Action.QUEUE_TICKET_REMOVED).count() == 1


def test_without_javascript_removing_posts_and_comes_back_with_a_message(owner_client, re_pool, line):
    response = owner_client.post(remove_url(line[1]), follow=True)
    assert response.redirect_chain == [(line_url(re_pool), 302)]
    assert "Took ci-agent-1 of" in response.content.decode()
    assert [t.machine_id for t in response.context["line"]] == ["ci-agent-0", "ci-agent-2"]


def test_a_member_sees_only_their_own_place_and_cannot_remove(client, re_pool, line, members):
    client.force_login(members[1])
    html = client.get(line_url(re_pool)).content.decode()
    assert "ci-agent-1" in html and "position 2" in html
    assert "ci-agent-0" not in html and "Remove from line" not in html
    assert client.post(remove_url(line[1])).status_code == 403
    assert QueueTicket.objects.get(pk=line[1].pk).outcome == ""


def test_another_organizations_ticket_is_not_found(owner_client, re_pool, other_organization):
    theirs = factories.QueueTicketFactory(pool=factories.LicensePoolFactory(organization=other_organization))
    url = reverse("licenses_remove_from_line", args=[re_pool.organization.public_id, "RE", theirs.public_id])
    assert owner_client.post(url).status_code == 404
    assert QueueTicket.objects.get(pk=theirs.pk).outcome == ""


def test_removing_asks_first_and_asking_changes_nothing(owner_client, re_pool, line):
    """The button's GET names the engine and what happens to it; only the confirmation's POST removes."""
    response = owner_client.get(remove_url(line[0]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "Take this engine out of the line?" in html and "ci-agent-0" in html
    assert f'action="{remove_url(line[0])}"' in html and 'method="post"' in html
    assert QueueTicket.objects.get(pk=line[0].pk).outcome == ""


def test_removing_needs_the_csrf_token(owner, re_pool, line):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(remove_url(line[0])).status_code == 403
    assert QueueTicket.objects.get(pk=line[0].pk).outcome == ""


def test_the_kse_tab_has_no_line(owner_client, kse_pool):
    html = owner_client.get(line_url(kse_pool)).content.decode()
    assert "Waiting for a license" not in html


def test_a_long_line_costs_the_queries_of_a_short_one(owner_client, re_pool, members, django_assert_num_queries):
    """The line is one page of tickets and one count, with each position computed in the database."""
    for n in range(3):
        factories.QueueTicketFactory(pool=re_pool, user=members[n])
    with CaptureQueriesContext(connection) as short:
        owner_client.get(line_url(re_pool))
    QueueTicket.objects.bulk_create(
        [
            QueueTicket(
                pool=re_pool,
                user=members[n % 5],
                machine_id=f"ci-{n}",
                joined_at=Now(),
                last_polled_at=Now(),
                poll_before=Now() + timedelta(seconds=60),
                expires_at=Now() + timedelta(minutes=30),
            )
            for n in range(300)
        ]
    )
    with django_assert_num_queries(len(short.captured_queries)):
        response = owner_client.get(line_url(re_pool))
    assert response.context["line"].paginator.count == 303
    assert response.context["line"][0].position == 1
