"""The Notifications page: owners and admins only, scoped to the organization, CSRF on every form,
the signing secret shown once, and a fixed number of queries however long the lists."""

import pytest
from django.test import Client

from notifications import actions
from notifications.event_types import EventType
from notifications.models import AlertPreference, Endpoint, Event, WebhookDelivery
from organizations.models import AuditEvent
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def endpoint(organization, owner, receiver, endpoint_for):
    return endpoint_for(receiver.url)[0]


def urls(org_id, endpoint_id, delivery_id):
    """Every page and form of the feature, as (method, url)."""
    base = f"/o/{org_id}/notifications/"
    one = f"{base}endpoints/{endpoint_id}/"
    return [
        ("get", base),
        ("post", base + "alerts/"),
        ("post", base + "endpoints/"),
        ("get", one),
        ("post", one + "edit/"),
        ("post", one + "roll-secret/"),
        ("post", one + "enable/"),
        ("post", one + "disable/"),
        ("post", one + "delete/"),
        ("post", one + "test/"),
        ("post", f"{one}deliveries/{delivery_id}/send-again/"),
    ]


@pytest.fixture
def delivery(endpoint):
    event = Event.objects.create(organization=endpoint.organization, type=EventType.SEAT_GRANTED)
    return WebhookDelivery.objects.create(event=event, endpoint=endpoint)


def test_members_are_refused_and_strangers_see_nothing(client, organization, member_user, endpoint, delivery):
    """A member gets 403 everywhere; a person of another organization, or another organization's
    endpoint in one's own organization's URL, is a 404."""
    client.force_login(member_user)
    for method, url in urls(organization.public_id, endpoint.pk, delivery.pk):
        assert getattr(client, method)(url).status_code == 403, url

    stranger_org = factories.OrganizationFactory()
    stranger = stranger_org.memberships.get().user
    client.force_login(stranger)
    for method, url in urls(organization.public_id, endpoint.pk, delivery.pk):
        assert getattr(client, method)(url).status_code == 404, url
    # Their own organization's URL with our endpoint's id: still not found, and nothing changed.
    for method, url in urls(stranger_org.public_id, endpoint.pk, delivery.pk)[3:]:
        assert getattr(client, method)(url).status_code == 404, url
    assert Endpoint.objects.filter(pk=endpoint.pk, disabled_at__isnull=True).exists()


def test_every_form_needs_the_csrf_token(organization, owner, endpoint, delivery):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    for method, url in urls(organization.public_id, endpoint.pk, delivery.pk):
        if method == "post":
            assert client.post(url).status_code == 403, url
    page = client.get(f"/o/{organization.public_id}/notifications/endpoints/{endpoint.pk}/").content.decode()
    # Every form that posts carries the token; a GET form (Delete asks first) must not leak it.
    assert page.count('name="csrfmiddlewaretoken"') == page.count('<form method="post"')
    assert page.count('<form method="post"') + page.count('<form method="get"') == page.count("<form")


def test_the_navigation_links_to_it_for_owners_and_admins_only(client, organization, owner, member_user):
    client.force_login(owner)
    assert (
        f"/o/{organization.public_id}/notifications/"
        in client.get(f"/o/{organization.public_id}/members/").content.decode()
    )
    client.force_login(member_user)
    assert "/notifications/" not in client.get(f"/o/{organization.public_id}/members/").content.decode()


def test_adding_an_endpoint_shows_its_secret_once(owner_client, organization, receiver, allow_private):
    response = owner_client.post(
        f"/o/{organization.public_id}/notifications/endpoints/",
        {"url": receiver.url, "description": "QA chat", "receive": "chosen", "event_types": ["quota.reached"]},
    )
    assert response.status_code == 200
    endpoint = Endpoint.objects.get()
    (secret,) = endpoint.signing_secrets()
    assert secret in response.content.decode()
    assert (endpoint.description, endpoint.event_types, endpoint.created_by.email) == (
        "QA chat",
        ["quota.reached"],
        organization.memberships.get(role="owner").user.email,
    )
    assert secret not in owner_client.get(f"/o/{organization.public_id}/notifications/").content.decode()
    assert (
        secret
        not in owner_client.get(f"/o/{organization.public_id}/notifications/endpoints/{endpoint.pk}/").content.decode()
    )
    assert AuditEvent.objects.filter(action="webhook.created", target_label=receiver.url).exists()


def test_choosing_events_means_choosing_at_least_one(owner_client, organization, receiver, allow_private):
    response = owner_client.post(
        f"/o/{organization.public_id}/notifications/endpoints/", {"url": receiver.url, "receive": "chosen"}
    )
    assert response.status_code == 400
    assert "Choose at least one event." in response.content.decode()
    assert not Endpoint.objects.exists()


def test_with_htmx_the_section_comes_back_in_place(owner_client, organization, receiver, allow_private):
    response = owner_client.post(
        f"/o/{organization.public_id}/notifications/endpoints/",
        {"url": receiver.url, "receive": "all"},
        headers={"HX-Request": "true"},
    )
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="endpoints"')
    assert "<html" not in html


def test_saving_email_alerts(owner_client, organization, owner):
    page = owner_client.get(f"/o/{organization.public_id}/notifications/").content.decode()
    for default in EventType.MAILED_BY_DEFAULT:
        assert f'value="{default}"' in page and "checked" in page.split(f'value="{default}"')[1][:40]
    response = owner_client.post(
        f"/o/{organization.public_id}/notifications/alerts/",
        {"event_types": ["seat.granted", "member.removed"], "daily_digest": "on"},
    )
    assert response.status_code == 302
    preference = AlertPreference.objects.get(organization=organization, user=owner)
    assert (preference.event_types, preference.daily_digest) == (["seat.granted", "member.removed"], True)


def test_endpoint_page_actions(owner_client, organization, owner, endpoint, delivery, receiver, work, committed):
    base = f"/o/{organization.public_id}/notifications/endpoints/{endpoint.pk}/"
    with committed():
        assert owner_client.post(base + "disable/").status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.disabled_at is not None
    with committed():
        owner_client.post(base + "enable/")
    endpoint.refresh_from_db()
    assert endpoint.disabled_at is None

    response = owner_client.post(base + "roll-secret/")
    endpoint.refresh_from_db()
    new_secret = endpoint.signing_secrets()[0]
    assert new_secret in response.content.decode() and len(endpoint.signing_secrets()) == 2

    with committed():
        response = owner_client.post(base + "test/", headers={"HX-Request": "true"})
    assert "webhook.test" in response.content.decode()
    assert 'hx-trigger="every 2s"' in response.content.decode()  # the log refreshes while pending
    work()
    assert receiver.requests[-1].json["type"] == "webhook.test"
    assert "Delivered" in owner_client.get(base).content.decode()

    with committed():
        owner_client.post(base + f"deliveries/{delivery.pk}/send-again/")
    work()
    assert WebhookDelivery.objects.get(pk=delivery.pk).status == "succeeded"

    response = owner_client.post(base + "edit/", {"url": receiver.url + "/v2", "receive": "all"})
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.url == receiver.url + "/v2"

    asked = owner_client.get(base + "delete/")
    assert "Delete this endpoint?" in asked.text and Endpoint.objects.exists()
    assert owner_client.post(base + "delete/").status_code == 302
    assert not Endpoint.objects.exists()
    assert AuditEvent.objects.filter(action="webhook.deleted").exists()


def test_pages_take_a_fixed_number_of_queries(
    owner_client, organization, owner, receiver, endpoint_for, django_assert_max_num_queries
):
    """Twenty endpoints and sixty deliveries cost what two and three do."""
    endpoints = [endpoint_for(receiver.url)[0] for _ in range(20)]
    for index in range(60):
        event = Event.objects.create(organization=organization, type=EventType.SEAT_GRANTED)
        WebhookDelivery.objects.create(event=event, endpoint=endpoints[index % 2])
    with django_assert_max_num_queries(8):
        assert owner_client.get(f"/o/{organization.public_id}/notifications/").status_code == 200
    with django_assert_max_num_queries(9):
        page = owner_client.get(f"/o/{organization.public_id}/notifications/endpoints/{endpoints[0].pk}/")
    assert page.status_code == 200
    assert page.content.decode().count("Send again") == 25  # one page of the log
    assert "Page 1 of 2" in page.content.decode()


def test_send_again_is_refused_while_an_attempt_is_under_way(organization, owner, delivery):
    from datetime import timedelta

    from django.utils import timezone

    WebhookDelivery.objects.filter(pk=delivery.pk).update(claimed_until=timezone.now() + timedelta(minutes=1))
    with pytest.raises(actions.Busy):
        actions.send_again(organization=organization, actor=owner, delivery_id=delivery.pk)


def test_operators_see_events_and_deliveries_in_the_admin_site(client, delivery):
    client.force_login(factories.UserFactory(is_staff=True, is_superuser=True))
    for model in ("event", "endpoint", "webhookdelivery", "mail"):
        assert client.get(f"/admin/notifications/{model}/").status_code == 200, model
    page = client.get(f"/admin/notifications/endpoint/{delivery.endpoint.pk}/change/").content.decode()
    assert delivery.endpoint.secret_encrypted not in page


def test_the_webhooks_guide_documents_every_event():
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[2] / "docs" / "WEBHOOKS.md").read_text()
    for event_type in (*EventType.SUBSCRIBABLE, EventType.TEST):
        assert f"`{event_type}`" in guide and f'"type": "{event_type}"' in guide, event_type
