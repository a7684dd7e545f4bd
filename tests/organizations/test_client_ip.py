import pytest
from django.test import RequestFactory

from organizations.audit import client_ip


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("81.2.69.160", "", "81.2.69.160"),
        # A client talking to the portal directly cannot choose the address it is recorded under.
        ("81.2.69.160", "198.51.100.1", "81.2.69.160"),
        # Behind a proxy on this host or the private network: the address the proxy appended last.
        ("127.0.0.1", "198.51.100.7", "198.51.100.7"),
        ("10.0.0.5", "192.0.2.44, 198.51.100.7", "198.51.100.7"),
        ("::1", "2001:db8::1", "2001:db8::1"),
        # A proxy passing garbage along is not believed.
        ("127.0.0.1", "not-an-address", "127.0.0.1"),
    ],
)
def test_the_client_address_is_believed_only_from_a_proxy(peer, forwarded, expected):
    """Audit events and rate limits use the real client's address, which a client cannot forge."""
    headers = {"REMOTE_ADDR": peer}
    if forwarded:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded
    assert client_ip(RequestFactory().get("/", **headers)) == expected
