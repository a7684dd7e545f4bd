"""Where webhooks may not go: refused when the endpoint is saved, with the reason, and again at
delivery time against the address the name resolves to, so a name cannot be used to get around it.
Names here resolve through the real resolver (no /etc/hosts entry, no stub): `localhost` resolves to
loopback, and the numeric forms `2852039166` and `0xa9fea9fe` resolve to 169.254.169.254. Nothing is
ever sent to a refused address."""

import ipaddress
import re

import pytest

from notifications import actions
from notifications.destinations import RefusedDestination, checked_addresses, refusal_reason
from notifications.models import Endpoint, Status, WebhookDelivery

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("address", "refused_always", "refused_by_default"),
    [
        ("169.254.169.254", True, True),  # AWS, GCP, Azure, OCI metadata
        ("169.254.170.2", True, True),  # ECS task metadata
        ("100.100.100.200", True, True),  # Alibaba Cloud metadata
        ("fd00:ec2::254", True, True),  # AWS metadata over IPv6
        ("fe80::1", True, True),
        ("::ffff:169.254.169.254", True, True),  # IPv4-mapped
        ("0.0.0.0", True, True),
        ("224.0.0.1", True, True),
        ("127.0.0.1", False, True),
        ("::1", False, True),
        ("10.1.2.3", False, True),
        ("172.16.0.9", False, True),
        ("192.168.1.1", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("100.64.0.1", False, True),  # carrier-grade NAT
        ("93.184.215.14", False, False),
        ("2606:4700::1111", False, False),
    ],
)
def test_address_rules(address, refused_always, refused_by_default):
    parsed = ipaddress.ip_address(address)
    assert (refusal_reason(parsed, allow_private=True) is not None) == refused_always
    assert (refusal_reason(parsed, allow_private=False) is not None) == refused_by_default


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/", "https:// or http://"),
        ("file:///etc/passwd", "https:// or http://"),
        ("https://user:secret@hooks.example.com/", "no user name or password"),
        ("http:///path", "no host name"),
        ("http://localhost:8080/hook", "127.0.0.1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://2852039166/latest/meta-data/", "2852039166 resolves to 169.254.169.254"),
        ("http://0xa9fea9fe/", "resolves to 169.254.169.254"),
        ("http://[::ffff:a9fe:a9fe]/", "169.254.169.254"),
        ("http://host.invalid/", "could not be found"),
    ],
)
def test_refused_urls_say_why(url, message):
    with pytest.raises(Exception, match=re.escape(message)):
        checked_addresses(url)


def test_metadata_is_refused_even_when_private_networks_are_allowed(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    assert checked_addresses("http://localhost:9/")[1]
    with pytest.raises(RefusedDestination, match=re.escape("169.254.169.254")):
        checked_addresses("http://2852039166/")


def test_the_page_refuses_a_loopback_endpoint_with_a_visible_error(owner_client, organization, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    response = owner_client.post(
        f"/o/{organization.public_id}/notifications/endpoints/", {"url": "http://localhost:8080/", "receive": "all"}
    )
    assert response.status_code == 400
    assert "127.0.0.1 is a loopback address" in response.content.decode()
    assert "WEBHOOK_ALLOW_PRIVATE=true" in response.content.decode()
    assert not Endpoint.objects.exists()


def test_delivery_checks_the_address_again(
    settings, organization, owner, member_user, kse_pool, receiver, endpoint_for, committed, work
):
    """An endpoint saved while private networks were allowed is refused at delivery once they are
    not: the rule is applied to the address the name resolves to then, and nothing is sent."""
    endpoint, _ = endpoint_for(receiver.url.replace("127.0.0.1", "localhost"))
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with committed():
        from licenses import actions as license_actions

        license_actions.grant_licenses(pool=kse_pool, users=[member_user], actor=owner)
    work()
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert delivery.status == Status.FAILED  # not retried: only the operator can change this
    assert delivery.attempts == 1
    assert "localhost resolves to 127.0.0.1" in delivery.last_error
    assert receiver.requests == []


def test_the_action_refuses_too(organization, owner):
    """The rule is the action's, not only the form's: every caller is held to it."""
    with pytest.raises(RefusedDestination):
        actions.create_endpoint(organization=organization, actor=owner, url="http://169.254.169.254/")
    assert not Endpoint.objects.exists()
