"""HTTP to the portal's engine API: one request at a time (`Portal.send`), and the same request
retried with jittered exponential backoff while the portal is unreachable, rate-limited or
unavailable (`Portal.call`), honouring Retry-After and never past a budget.

The API key travels only in the Authorization header of requests to the configured portal: redirects
are not followed (urllib would repeat the header to wherever one points), and nothing here puts the
key in a message.
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import Message
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from typing import Any, Callable

from . import __version__
from .durations import format_duration
from .errors import PortalRefusal, PortalUnreachable, UnexpectedResponse, UsageError

API_PREFIX = "/api/v1/"
REQUEST_TIMEOUT_SECONDS = 30
MAX_BODY_BYTES = 1024 * 1024
USER_AGENT = f"katalon-license/{__version__}"
# Answers worth the same request again: the portal says so (429, 503 with Retry-After), or a proxy
# in front of it is restarting. Everything else is an answer.
TRANSIENT_STATUSES = {429, 500, 502, 503, 504}
TRANSIENT_CODES = {"idempotency_key_in_use"}

Sleep = Callable[[float], None]
Notify = Callable[[str], None]


def parse_time(value: str) -> datetime:
    """The contract's times (ISO 8601, UTC, 'Z'); fromisoformat reads 'Z' only from Python 3.11."""
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def display_url(url: str) -> str:
    """The URL without any user:password@ part, for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


@dataclass
class Response:
    status: int
    body: Any
    headers: Message
    received_at: float  # time.monotonic() when the answer arrived
    server_time: datetime | None  # from the Date header

    def seconds_until(self, moment: str) -> float:
        """Seconds from this answer to `moment` (a contract time) by the portal's clock when it sent
        a Date header, so a skewed local clock cannot make a lease look longer or shorter."""
        reference = self.server_time or datetime.now(timezone.utc)
        # Date has whole seconds: take the shorter reading.
        return (parse_time(moment) - reference).total_seconds() - (1 if self.server_time else 0)

    def monotonic_deadline(self, moment: str) -> float:
        return self.received_at + self.seconds_until(moment)


class Transient(Exception):
    """A failure that the same request may not meet again."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Backoff:
    """Delays between attempts: exponential from `initial` to `cap`, jittered so that a fleet of CI
    agents that failed together does not retry together, never shorter than a Retry-After, and
    None once the next attempt could not start within the budget."""

    def __init__(
        self,
        budget: float,
        *,
        initial: float = 1.0,
        cap: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ):
        self.clock = clock
        self.deadline = clock() + budget
        self.initial = initial
        self.cap = cap
        self.rng = rng
        self.attempt = 0

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def next_delay(self, retry_after: float | None = None) -> float | None:
        base = min(self.cap, self.initial * 2**self.attempt)
        self.attempt += 1
        remaining = self.remaining()
        if remaining <= 0:
            return None
        if retry_after is not None:
            if retry_after > remaining:
                return None
            return min(max(retry_after, base) * (1 + 0.25 * self.rng()), remaining)
        return min(base / 2 + self.rng() * base / 2, remaining)


class Portal:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        log: Notify | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.log = log or (lambda line: None)
        self._opener = urllib.request.build_opener(_NoRedirects)

    @property
    def shown_url(self) -> str:
        return display_url(self.base_url)

    def send(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        *,
        idempotency_key: str | None = None,
        accept: str = "application/json",
        authenticated: bool = True,
    ) -> Response:
        """One request. Returns a 2xx answer; raises PortalRefusal for the contract's errors, Transient
        for what a retry may fix, UnexpectedResponse for anything that is not the engine API."""
        url = self.base_url + API_PREFIX + path
        data = None if body is None else json.dumps(body).encode()
        # The scheme was checked to be http or https when the URL was configured.
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Accept", accept)
        request.add_header("User-Agent", USER_AGENT)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if idempotency_key is not None:
            request.add_header("Idempotency-Key", idempotency_key)
        if authenticated and self.api_key:
            request.add_unredirected_header("Authorization", f"Bearer {self.api_key}")
        started = time.monotonic()
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                status, headers, raw = answer.status, answer.headers, answer.read(MAX_BODY_BYTES)
        except urllib.error.HTTPError as answer:
            status, headers = answer.code, answer.headers
            try:
                raw = answer.read(MAX_BODY_BYTES)
            except (OSError, HTTPException):
                raw = b""
            finally:
                answer.close()
        except urllib.error.URLError as error:
            raise self._connection_failure(error.reason) from None
        except (OSError, HTTPException) as error:  # timeouts, resets, a connection closed mid-answer
            raise self._connection_failure(error) from None
        received = time.monotonic()
        request_id = headers.get("X-Request-ID", "-")
        self.log(f"{method} {API_PREFIX}{path} -> {status} in {received - started:.2f}s (X-Request-ID {request_id})")
        return self._interpret(status, headers, raw, received)

    def _connection_failure(self, reason: Any) -> Exception:
        where = self.shown_url
        # Retrying makes neither a certificate trusted nor a plain-http server speak TLS.
        if isinstance(reason, ssl.SSLCertVerificationError):
            return UnexpectedResponse(
                f"the TLS certificate of {where} could not be verified ({reason.verify_message}); "
                "point SSL_CERT_FILE at the CA bundle that signed it"
            )
        if isinstance(reason, ssl.SSLError) and not isinstance(reason, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return UnexpectedResponse(
                f"TLS with {where} failed ({reason.reason or reason}); does the portal serve https at this address?"
            )
        if isinstance(reason, socket.gaierror):
            return Transient(f"cannot resolve the host of {where}")
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return Transient(f"{where} did not answer within {self.timeout:g}s")
        if isinstance(reason, ConnectionRefusedError):
            return Transient(f"connection to {where} refused")
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return Transient(f"cannot reach {where} ({text})")

    def _interpret(self, status: int, headers: Message, raw: bytes, received: float) -> Response:
        body = _json(raw) if "json" in (headers.get("Content-Type") or "") else None
        if 200 <= status < 300:
            if body is None and headers.get_content_type() == "application/json":
                raise UnexpectedResponse(f"{self.shown_url} answered {status} with a body that is not JSON")
            return Response(status, body if body is not None else raw, headers, received, _date(headers))
        error = body.get("error") if isinstance(body, dict) else None
        retry_after = _retry_after(headers)
        if 300 <= status < 400:
            location = display_url(urllib.parse.urljoin(self.base_url + "/", headers.get("Location") or ""))
            raise UsageError(
                f"{self.shown_url} redirects to {location}; set KATALON_ADMIN_URL (or --url) to the portal's "
                "own address (redirects are not followed, so the API key goes nowhere else)"
            )
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            code, message = error["code"], str(error.get("message") or "")
            if status in TRANSIENT_STATUSES or code in TRANSIENT_CODES:
                raise Transient(f"{status} {code}: {message.rstrip('.')}", retry_after)
            details = error.get("details") if isinstance(error.get("details"), dict) else {}
            raise PortalRefusal(status, code, message, details)
        if status in TRANSIENT_STATUSES:
            raise Transient(f"{self.shown_url} answered {status}", retry_after)
        raise UnexpectedResponse(
            f"{self.shown_url} answered {status} ({headers.get_content_type()}), not the engine API; "
            "is KATALON_ADMIN_URL the portal's address?"
        )

    def call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        *,
        budget: float,
        idempotency_key: str | None = None,
        sleep: Sleep = time.sleep,
        notify: Notify | None = None,
        what: str = "the portal",
        **options: Any,
    ) -> Response:
        """`send`, again after each transient failure until it succeeds or `budget` seconds have
        passed (PortalUnreachable then). A retried activation keeps its Idempotency-Key, so a license
        granted to an answer that got lost is handed back instead of taken twice."""
        backoff = Backoff(budget)
        while True:
            try:
                return self.send(method, path, body, idempotency_key=idempotency_key, **options)
            except Transient as failure:
                remaining = backoff.remaining()
                delay = backoff.next_delay(failure.retry_after)
                if delay is None:
                    if failure.retry_after is not None and failure.retry_after > remaining > 0:
                        why = (
                            f"it asks for a retry in {format_duration(failure.retry_after)}, beyond the "
                            f"{format_duration(budget)} --connect-timeout"
                        )
                    else:
                        why = f"gave up on {what} after {format_duration(budget)} of retrying (--connect-timeout)"
                    raise PortalUnreachable(f"{failure.reason}; {why}") from None
                if notify is not None:
                    notify(f"{failure.reason}; retrying in {_seconds(delay)}")
                sleep(delay)


def _seconds(delay: float) -> str:
    return f"{delay:.1f}s" if delay < 10 else format_duration(delay)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _retry_after(headers: Message) -> float | None:
    value = (headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    if value:
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            return None
    return None


def _date(headers: Message) -> datetime | None:
    value = headers.get("Date")
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
