"""Taking, keeping and giving back one license through the engine API (contract/engine-api.md):
`Licensing.activate` (waiting in the pool's queue when asked), `Heartbeat` (a thread that keeps the
lease alive), `Licensing.release`.

Everything that waits takes a `sleep` that may raise, so a signal or a shutdown ends a wait at once,
and a `clock`, so a test can drive the waits without the wall clock.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from .durations import format_duration
from .errors import EX_UNAVAILABLE, ClientError, PortalRefusal, PortalUnreachable, UnexpectedResponse
from .portal import Notify, Portal, Response, Sleep

PRODUCTS = {"KSE": "Katalon Studio Enterprise", "RE": "Runtime Engine"}
SESSION_ID = re.compile(r"s_[A-Za-z0-9_\-]{1,38}")
TICKET_ID = re.compile(r"q_[A-Za-z0-9_\-]{1,38}")
MAX_WAIT_SECONDS = 86_400  # the contract's bound on max_wait_seconds
# A portal without the queue answers a queue request with the plain 409. The client then asks again
# after these delays (seconds, growing, jittered) until the wait is over, so --wait still waits.
UNQUEUED_RETRY_INITIAL, UNQUEUED_RETRY_CAP = 5.0, 60.0
# How often a waiting engine says it is still waiting when its position has not moved.
QUIET_WAIT_REPORT_SECONDS = 60


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ActivationRequest:
    product: str
    machine_id: str
    org_id: str | None = None
    hostname: str = ""
    release_previous: bool = False
    ephemeral: bool = False

    def body(self, *, max_wait_seconds: int | None = None) -> dict:
        """The activate request; with `max_wait_seconds` a request to wait in the pool's queue."""
        body: dict = {"product": self.product, "machine_id": self.machine_id}
        if self.org_id:
            body["org_id"] = self.org_id
        if self.hostname:
            body["hostname"] = self.hostname
        if self.release_previous:
            body["release_previous"] = True
        if self.ephemeral:
            body["ephemeral"] = True
        if max_wait_seconds is not None:
            body["queue"] = True
            body["max_wait_seconds"] = max(1, min(MAX_WAIT_SECONDS, max_wait_seconds))
        return body


@dataclass
class License:
    """A granted activation: the portal's 201 body, and the lease as seen from this process."""

    body: dict
    lease_deadline: float  # time.monotonic() by which the lease runs out (by the portal's clock)
    received_at: float

    @classmethod
    def from_response(cls, response: Response) -> License:
        body = response.body
        try:
            lease_expires_at = body["session"]["lease_expires_at"]
            if not SESSION_ID.fullmatch(body["session"]["id"]):
                raise ValueError(body["session"]["id"])
            int(body["session"]["heartbeat_interval_seconds"])
            return cls(body, response.monotonic_deadline(lease_expires_at), response.received_at)
        except (KeyError, TypeError, ValueError):
            raise UnexpectedResponse("the portal granted a license with an answer missing its session") from None

    @property
    def session_id(self) -> str:
        return self.body["session"]["id"]

    @property
    def heartbeat_interval(self) -> int:
        return max(1, int(self.body["session"]["heartbeat_interval_seconds"]))

    @property
    def organization(self) -> dict:
        organization = self.body.get("organization")
        return organization if isinstance(organization, dict) else {}

    def environment(self) -> dict[str, str]:
        """What the wrapped command finds in its environment about the license it runs under."""
        body, session = self.body, self.body["session"]
        values = {
            "KATALON_LICENSE_SESSION_ID": session["id"],
            "KATALON_LICENSE_PRODUCT": body.get("product"),
            "KATALON_LICENSE_ORG_ID": self.organization.get("id"),
            "KATALON_LICENSE_ORG_NAME": self.organization.get("name"),
            "KATALON_LICENSE_MACHINE_ID": (body.get("machine") or {}).get("machine_id"),
            "KATALON_LICENSE_LEASE_EXPIRES_AT": session.get("lease_expires_at"),
            "KATALON_LICENSE_HEARTBEAT_INTERVAL_SECONDS": str(self.heartbeat_interval),
            "KATALON_LICENSE_EXPIRES_AT": (body.get("license") or {}).get("expires_at"),
        }
        return {name: str(value) for name, value in values.items() if value is not None}

    def describe(self) -> str:
        product = PRODUCTS.get(self.body.get("product"), self.body.get("product") or "a")
        sessions = ((self.body.get("usage") or {}).get("sessions")) or {}
        where = f" in {self.organization['name']}" if self.organization.get("name") else ""
        in_use = f", {sessions['used']} of {sessions['quota']} in use" if {"used", "quota"} <= set(sessions) else ""
        return (
            f"took a {product} license{where}: session {self.session_id}{in_use}; "
            f"heartbeat every {format_duration(self.heartbeat_interval)}"
        )


@dataclass
class QueuePlace:
    """The `queued` object of a 202 answer, and when its ticket must be polled again."""

    ticket: str
    position: int
    waiting: int
    retry_after_seconds: float
    poll_deadline: float  # time.monotonic() of poll_before
    expires_at: str

    @classmethod
    def from_response(cls, response: Response) -> QueuePlace:
        try:
            queued = response.body["queued"]
            ticket = queued["ticket"]
            if not TICKET_ID.fullmatch(ticket):
                raise ValueError(ticket)
            return cls(
                ticket=ticket,
                position=int(queued["position"]),
                waiting=int(queued["waiting"]),
                retry_after_seconds=max(1.0, float(queued["retry_after_seconds"])),
                poll_deadline=response.monotonic_deadline(queued["poll_before"]),
                expires_at=str(queued["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            raise UnexpectedResponse(
                "the portal put the activation in its queue with an answer missing the ticket"
            ) from None


class WaitOver(ClientError):
    exit_code = EX_UNAVAILABLE
    code = "session_quota_exceeded"


@dataclass
class Licensing:
    """The engine API's license calls, each retried for `connect_timeout` seconds while the portal
    is unreachable or busy."""

    portal: Portal
    connect_timeout: float
    sleep: Sleep = time.sleep
    notify: Notify = field(default=lambda line: None)
    clock: Callable[[], float] = time.monotonic
    rng: Callable[[], float] = random.random

    def activate(self, request: ActivationRequest, *, wait: int | None = None) -> License:
        """One license for `request`. Without `wait` a full pool refuses at once (PortalRefusal);
        with it the activation waits in the pool's queue for at most `wait` seconds, saying where it
        stands as its position moves, and raises WaitOver when the wait runs out."""
        if wait is None:
            return License.from_response(self._post(request.body()))
        return self._wait_for_license(request, wait)

    def heartbeat(self, session_id: str, *, budget: float, sleep: Sleep | None = None) -> Response:
        return self._session_call("heartbeat", session_id, budget, sleep)

    def release(self, session_id: str, *, budget: float, sleep: Sleep | None = None) -> Response:
        return self._session_call("release", session_id, budget, sleep)

    def _session_call(self, action: str, session_id: str, budget: float, sleep: Sleep | None) -> Response:
        return self.portal.call(
            "POST",
            f"engine/sessions/{session_id}/{action}",
            {},
            budget=budget,
            sleep=sleep or self.sleep,
            notify=self.notify,
            what=f"the {action}",
        )

    def _post(self, body: dict) -> Response:
        # One key per decision: its retries after a lost answer get that answer back, and a new
        # attempt (a poll, or asking again after a refusal) is decided afresh.
        return self.portal.call(
            "POST",
            "engine/activate",
            body,
            budget=self.connect_timeout,
            idempotency_key=new_idempotency_key(),
            sleep=self.sleep,
            notify=self.notify,
            what="the activation",
        )

    def _wait_for_license(self, request: ActivationRequest, wait: int) -> License:
        started = self.clock()
        give_up_at = started + wait
        unqueued_delay = UNQUEUED_RETRY_INITIAL
        while True:
            join = request.body(max_wait_seconds=math.ceil(max(1.0, give_up_at - self.clock())))
            try:
                response = self._post(join)
            except PortalRefusal as refusal:
                if refusal.code != "session_quota_exceeded":
                    raise
                # Asked to queue, a queueing portal answers 202; this one does not queue, so ask again
                # until the wait is over, as Katalon's -enableLicenseRetry does (without fairness).
                remaining = give_up_at - self.clock()
                if remaining <= 0:
                    raise self._wait_over(refusal.message, started) from None
                delay = min(remaining, unqueued_delay * (0.8 + 0.4 * self.rng()))
                self.notify(
                    f"no license free ({refusal.message}); the portal keeps no queue, so asking again "
                    f"in {format_duration(delay)} (waiting at most {format_duration(remaining)} more)"
                )
                self.sleep(delay)
                unqueued_delay = min(UNQUEUED_RETRY_CAP, unqueued_delay * 1.5)
                continue
            if response.status != 202:
                return License.from_response(response)
            granted = self._wait_in_line(join, QueuePlace.from_response(response), started, give_up_at)
            if granted is not None:
                return granted
            # The ticket lapsed because this engine could not poll in time: join the line again.

    def _wait_in_line(self, join: dict, place: QueuePlace, started: float, give_up_at: float) -> License | None:
        """Poll the ticket (the contract: the same request again, plus the ticket) until the license
        is granted. None when the ticket lapsed because this engine polled too late (the caller joins
        again); an error for everything else."""
        self._report_place(place, started, None)
        last_report = self.clock()
        shown = place
        # A portal that keeps answering 202 past the wait is not doing what the contract says; the
        # client still stops waiting.
        hard_stop = give_up_at + 2 * place.retry_after_seconds + 60
        while True:
            time_to_deadline = place.poll_deadline - self.clock()
            jitter = min(place.retry_after_seconds * 0.1, max(0.0, time_to_deadline - place.retry_after_seconds) / 2)
            self.sleep(place.retry_after_seconds + jitter * self.rng())
            polled_late = self.clock() > place.poll_deadline
            try:
                response = self._post({**join, "ticket": place.ticket})
            except PortalRefusal as refusal:
                if refusal.code == "session_quota_exceeded":
                    raise self._wait_over(refusal.message, started) from None
                if refusal.code == "ticket_not_found" and (polled_late or self.clock() > place.poll_deadline):
                    if self.clock() >= give_up_at:
                        raise self._wait_over("the ticket lapsed at the end of the wait", started) from None
                    self.notify("lost the place in line (could not poll before its deadline); joining it again")
                    return None
                if refusal.code == "ticket_not_found":
                    refusal.message += " The ticket was removed from the line (by an admin, or by the portal)."
                raise
            if response.status != 202:
                return License.from_response(response)
            place = QueuePlace.from_response(response)
            now = self.clock()
            if now > hard_stop:
                raise self._wait_over("the portal kept the activation waiting past its wait", started)
            if (place.position, place.waiting) != (shown.position, shown.waiting) or (
                now - last_report >= QUIET_WAIT_REPORT_SECONDS
            ):
                self._report_place(place, started, shown)
                shown, last_report = place, now

    def _report_place(self, place: QueuePlace, started: float, before: QueuePlace | None) -> None:
        waited = format_duration(self.clock() - started)
        moved = "" if before is None or before.position == place.position else f" (was {before.position})"
        self.notify(
            f"waiting for a license: position {place.position}{moved} of {place.waiting} in line, "
            f"waited {waited}, waiting until {place.expires_at} at most"
        )

    def _wait_over(self, message: str, started: float) -> WaitOver:
        return WaitOver(
            f"no license became free within the wait ({format_duration(self.clock() - started)}): {message}"
        )


@dataclass(frozen=True)
class Loss:
    """Why a running license stopped being held."""

    code: str
    message: str
    reason: str  # the contract's details.reason, or what the client saw


class Heartbeat(threading.Thread):
    """Renews the lease at the interval the portal gives, retrying a failed renewal with backoff for
    as long as the lease still runs. Calls `on_loss` once if the portal ends the session (410) or the
    lease runs out unrenewed, then stops."""

    def __init__(
        self,
        licensing: Licensing,
        license: License,
        *,
        on_loss: Callable[[Loss], None],
        on_renew: Callable[[Response], None] | None = None,
    ):
        super().__init__(name="katalon-license heartbeat", daemon=True)
        self.licensing = licensing
        self.license = license
        self.on_loss = on_loss
        self.on_renew = on_renew or (lambda response: None)
        self.loss: Loss | None = None
        # When the lease runs out unless renewed (time.monotonic()), as of the last renewal.
        self.lease_deadline = license.lease_deadline
        self._stopping = threading.Event()

    def stop(self, wait: float = 5.0) -> None:
        """Stop renewing. Waits a little for a renewal in flight; one that hangs on an unresponsive
        portal is left to its timeout, since the run is over and its license about to be released."""
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(wait)

    def _sleep(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise _Stopped

    def run(self) -> None:
        clock = self.licensing.clock
        interval = self.license.heartbeat_interval
        next_beat = self.license.received_at + interval
        try:
            while True:
                self._sleep(max(0.0, next_beat - clock()))
                try:
                    response = self.licensing.heartbeat(
                        self.license.session_id, budget=max(0.0, self.lease_deadline - clock()), sleep=self._sleep
                    )
                except PortalRefusal as refusal:
                    reason = refusal.details.get("reason") if isinstance(refusal.details, dict) else None
                    self._lost(Loss(refusal.code, refusal.message, str(reason or refusal.code)))
                    return
                except (PortalUnreachable, UnexpectedResponse) as failure:
                    self._lost(
                        Loss(failure.code, f"the lease ran out without a renewal: {failure.message}", "unrenewed")
                    )
                    return
                session = response.body.get("session") if isinstance(response.body, dict) else None
                try:
                    self.lease_deadline = response.monotonic_deadline(session["lease_expires_at"])
                    interval = max(1, int(session["heartbeat_interval_seconds"]))
                except (KeyError, TypeError, ValueError):
                    self._lost(Loss("unexpected_response", "the portal's heartbeat answer has no lease", "unrenewed"))
                    return
                next_beat = response.received_at + interval
                self.on_renew(response)
        except _Stopped:
            return

    def _lost(self, loss: Loss) -> None:
        if self._stopping.is_set():
            return  # the run ended meanwhile; its release says what there is to say
        self.loss = loss
        self.on_loss(loss)


class _Stopped(Exception):
    """The heartbeat was told to stop while it waited."""
