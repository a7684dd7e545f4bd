"""Where webhooks may go, and the POST that takes them there.

A webhook URL is chosen by an organization's admin, and the portal usually runs inside a network
that admin cannot reach: without care, an endpoint is a way to make the server call its own admin
interfaces or the cloud's metadata service (server-side request forgery). So:

- only http and https, without credentials in the URL;
- the host is resolved, and every address it resolves to is checked, when the endpoint is saved
  and again on every attempt; the attempt then connects to the address that was checked, so a DNS
  answer that changes between the check and the connection (rebinding) cannot slip past;
- link-local addresses (cloud metadata lives at 169.254.169.254) and the other known metadata
  addresses are always refused, as are unspecified, multicast and reserved ones;
- loopback and private networks are refused unless the operator sets WEBHOOK_ALLOW_PRIVATE=true;
- redirects are not followed (a redirect is a failed delivery), and every attempt ends after
  TIMEOUT seconds however slowly the receiver answers.
"""

import http.client
import io
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

TIMEOUT = 10.0
USER_AGENT = "KatalonAdmin-Webhooks/1"
RESPONSE_EXCERPT_BYTES = 1024

# What WEBHOOK_ALLOW_PRIVATE opens besides loopback: private networks of RFC 1918 and RFC 4193, and
# carrier-grade NAT. Other non-global ranges (unspecified, multicast, documentation, reserved) stay shut.
PRIVATE_NETWORKS = [
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
]
# Metadata services outside the link-local ranges: Alibaba Cloud's, and AWS's IPv6 one.
METADATA_ADDRESSES = {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}


class RefusedDestination(Exception):
    """The URL or an address it resolves to is not one webhooks may be sent to."""


class UnreachableDestination(Exception):
    """The host could not be resolved or reached, or did not answer in time: worth trying again."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # with the query string


def parse(url):
    """The URL's parts, or RefusedDestination saying what is wrong with it."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise RefusedDestination(f"This is not a valid URL ({error}).") from error
    if parts.scheme not in ("http", "https"):
        raise RefusedDestination("Webhook URLs must start with https:// or http://.")
    if not parts.hostname:
        raise RefusedDestination("The URL has no host name.")
    if parts.username is not None or parts.password is not None:
        raise RefusedDestination("Put no user name or password in the URL; check the signature instead.")
    if any(char.isspace() or ord(char) < 32 for char in url.strip()):
        raise RefusedDestination("The URL must not contain spaces or control characters.")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)


def refusal_reason(address, *, allow_private):
    """Why webhooks may not go to `address` (an ipaddress object), or None when they may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return refusal_reason(embedded, allow_private=allow_private)
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address; webhooks are never sent there."
    if address.is_link_local:
        return f"{address} is a link-local address (where cloud metadata services live); webhooks are never sent there."
    if address.is_global and not address.is_multicast:
        return None
    if address.is_loopback or any(address in network for network in PRIVATE_NETWORKS):
        if allow_private:
            return None
        kind = "loopback" if address.is_loopback else "private-network"
        return (
            f"{address} is a {kind} address; the operator of this portal allows those only by setting "
            "WEBHOOK_ALLOW_PRIVATE=true."
        )
    return f"{address} is not an address webhooks can be sent to."


def resolve(host, port):
    """Every address `host` resolves to. The only place a name is looked up."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise UnreachableDestination(f"The host {host} could not be found.") from error
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))


def checked_addresses(url):
    """The target and the addresses its host resolves to, all of which webhooks may go to; else
    RefusedDestination (naming the refused address) or UnreachableDestination."""
    target = parse(url)
    addresses = resolve(target.host, target.port)
    allow_private = settings.WEBHOOK_ALLOW_PRIVATE
    for address in addresses:
        reason = refusal_reason(address, allow_private=allow_private)
        if reason is not None:
            refused_name = "" if _is_literal(target.host) else f"{target.host} resolves to "
            raise RefusedDestination(refused_name + reason)
    return target, addresses


def _is_literal(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Response:
    status: int
    excerpt: str


def post(url, *, body, headers, timeout=TIMEOUT):
    """POST `body` (bytes) to `url`, checked as above, within `timeout` seconds all told. Returns
    the Response, whatever its status; raises RefusedDestination or UnreachableDestination."""
    deadline = time.monotonic() + timeout
    target, addresses = checked_addresses(url)
    sock = _connect(addresses, target.port, deadline)
    try:
        if target.scheme == "https":
            context = ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=target.host)
        connection = http.client.HTTPConnection(target.host, target.port)
        # The connection is already made, to the address that was checked: http.client only speaks
        # HTTP over it, and every read and write is held to the deadline.
        connection.sock = _DeadlineSocket(sock, deadline)
        host_header = target.host if ":" not in target.host else f"[{target.host}]"
        default_port = 443 if target.scheme == "https" else 80
        if target.port != default_port:
            host_header += f":{target.port}"
        connection.putrequest("POST", target.path, skip_host=True, skip_accept_encoding=True)
        for name, value in {
            "Host": host_header,
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Connection": "close",
            **headers,
        }.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        excerpt = response.read(RESPONSE_EXCERPT_BYTES).decode("utf-8", "replace")
        return Response(response.status, excerpt)
    except (TimeoutError, OSError, http.client.HTTPException) as error:
        raise UnreachableDestination(_describe(error)) from error
    finally:
        sock.close()


def _connect(addresses, port, deadline):
    last_error = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            return socket.create_connection((str(address), port), timeout=remaining)
        except OSError as error:
            last_error = error
    raise UnreachableDestination(_describe(last_error or TimeoutError()))


def _describe(error):
    if isinstance(error, TimeoutError | socket.timeout):
        return f"No answer within {TIMEOUT:g} seconds."
    if isinstance(error, ssl.SSLError | ssl.CertificateError):
        return f"TLS failed: {error}"
    if isinstance(error, ConnectionRefusedError):
        return "The connection was refused."
    if isinstance(error, http.client.HTTPException):
        return f"The answer was not valid HTTP ({type(error).__name__})."
    return f"The connection failed: {error}"


class _DeadlineSocket:
    """A socket whose every operation times out at one shared deadline, so a receiver that drips
    its answer a byte at a time still cannot hold a worker past TIMEOUT. http.client needs only
    these methods of it."""

    def __init__(self, sock, deadline):
        self._sock = sock
        self._deadline = deadline

    def _arm(self):
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self._sock.settimeout(remaining)

    def sendall(self, data):
        self._arm()
        return self._sock.sendall(data)

    def recv_into(self, buffer):
        self._arm()
        return self._sock.recv_into(buffer)

    def makefile(self, mode="rb"):
        return io.BufferedReader(_DeadlineReader(self))

    def close(self):
        # http.client closes its connection as soon as it has read the headers of a "Connection:
        # close" answer, before the body is read; post() closes the real socket when done.
        pass


class _DeadlineReader(io.RawIOBase):
    def __init__(self, deadline_socket):
        self._socket = deadline_socket

    def readable(self):
        return True

    def readinto(self, buffer):
        return self._socket.recv_into(buffer)
