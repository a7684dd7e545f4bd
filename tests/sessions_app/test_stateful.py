"""A stateful property test (issue 9): hypothesis interleaves what engines, admins and time do to one
organization's RE and KSE pools, and after every step the database must match a small model of the
rules and no limit may be overstepped.

Engines call the engine API through Django's test client (activate, with and without `queue`,
`ephemeral` and `release_previous`; poll a ticket; heartbeat; release). Admins end sessions and
deactivate machines from the Licenses page, and remove members, change quotas, grant and revoke KSE
licenses, create offline licenses and take tickets out of the line through the actions the pages
call. People revoke and create their API keys. Time moves in the database, never by sleeping (every
rule reads the database's clock): one engine stops heartbeating (its lease is moved into the past),
one stops polling, a wait runs out, or an hour passes for everything; `expire_sessions` runs.

The model (`Rules`) says who holds what and predicts every answer: each API call's status and error
code (409 `session_quota_exceeded` exactly when the model's pool is full, 410 with the reason the model
gives the session, 202 with the position it expects), and after each step the sessions, registered
machines, licensed users, offline licenses, waiting tickets, keys and members in the database must be
the model's. Independently of the model, every step checks the limits themselves on the database.

Each example starts from a clean state: it runs inside a savepoint rolled back at its end (the API's
own transactions nest inside it as savepoints).

CI runs 200 examples of 30 steps (the "stateful-ci" profile, derandomized: a failure reproduces by
running the test again, and its blob is printed). A longer, randomized run:
    STATEFUL_EXAMPLES=2000 .venv/bin/python -m pytest tests/sessions_app/test_stateful.py
(STATEFUL_STEPS changes the steps per example.)
"""

import copy
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from django.core.cache import caches
from django.db import connection, transaction
from django.db.models import BooleanField, Case, CharField, ExpressionWrapper, F, Q, Value, When
from django.db.models.functions import Cast, Concat, Now
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from licenses import actions as license_actions
from licenses import errors
from licenses.models import LicensedUser, LicensePool, OfflineLicense, count_in_pool
from organizations import actions as organization_actions
from organizations.models import Membership
from sessions_app import actions as session_actions
from sessions_app import ratelimit
from sessions_app.models import ApiKey, EngineSession, Machine, QueueTicket
from tests import factories
from tests.reliability import record

PRODUCTS = ("RE", "KSE")
PEOPLE = 4
MACHINE_IDS = tuple(f"agent-{n}" for n in range(5))
LEASE_SECONDS = 300
# "An hour passes": far beyond every lease (300 s), poll deadline (< 1 min) and short offline
# license (30 min), and far short of a long one (30 days), so no deadline is near the clock's edge.
HOUR = timedelta(hours=1)
OFFLINE_LASTS = {"short": timedelta(minutes=30), "long": timedelta(days=30)}

settings.register_profile(
    "stateful-ci",
    max_examples=200,
    stateful_step_count=30,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "stateful-long",
    settings.get_profile("stateful-ci"),
    max_examples=int(os.environ.get("STATEFUL_EXAMPLES", "2000")),
    derandomize=False,
)


def profile():
    chosen = settings.get_profile("stateful-long" if "STATEFUL_EXAMPLES" in os.environ else "stateful-ci")
    steps = os.environ.get("STATEFUL_STEPS")
    return settings(chosen, stateful_step_count=int(steps)) if steps else chosen


# ------------------------------------------------------------------------------------------------
# The model


@dataclass
class Session:
    product: str
    person: int
    machine_id: str
    row: int  # the machine registration it runs on (a machine id registered again is another row)
    order: int  # activation order: a lowered quota ends the newest first
    state: str = "live"  # live | lapsed (lease ran out, not yet marked) | ended
    reason: str = ""


@dataclass
class MachineRow:
    row: int
    ephemeral: bool
    person: int  # who activated on it last


@dataclass
class Ticket:
    person: int
    machine_id: str
    order: int
    state: str = "waiting"  # waiting | wait_over (expires_at passed, still polled in time) | gone


@dataclass
class Answer:
    status: int
    code: str = ""
    details: dict | None = None  # the figures the answer must carry, where the model knows them


class Rules:
    """One organization with an RE and a KSE pool, as the contract and domain.md state its rules."""

    def __init__(self, quota, machine_quota, restricted_keys):
        self.quota = dict(quota)
        self.machine_quota = dict(machine_quota)
        self.members = set(range(PEOPLE))
        self.key_revoked = dict.fromkeys(range(PEOPLE), False)
        self.key_restricted = dict(restricted_keys)
        self.seats = set()
        self.offline = {product: [] for product in PRODUCTS}  # "short" / "long", unexpired only
        self.sessions = {}  # public id -> Session
        self.machines = {}  # (product, machine id) -> MachineRow, registered ones only
        self.tickets = {}  # public id -> Ticket
        self.next_row = self.next_order = 0

    # -- figures

    def live(self, product):
        return [s for s in self.sessions.values() if s.product == product and s.state == "live"]

    def used(self, product):
        held = len(self.seats) if product == "KSE" else len(self.live(product))
        return held + len(self.offline[product])

    def registered(self, product):
        return sum(1 for (p, _), _m in self.machines.items() if p == product)

    def waiting(self):
        return sorted((t for t in self.tickets.values() if t.state == "waiting"), key=lambda t: t.order)

    # -- what ending sessions does

    def end(self, sessions, reason):
        """EngineSessionQuerySet.end(): lapsed leases are recorded as expired, live ones with the
        reason; then an ephemeral machine left without a live session is deregistered."""
        rows = set()
        for session in sessions:
            if session.state == "ended":
                continue
            session.reason = "expired" if session.state == "lapsed" else reason
            session.state = "ended"
            rows.add(session.row)
        for key, machine in list(self.machines.items()):
            live_on_it = any(s.row == machine.row and s.state == "live" for s in self.sessions.values())
            if machine.row in rows and machine.ephemeral and not live_on_it:
                del self.machines[key]

    def mark_lapsed(self, product=None):
        self.end([s for s in self.sessions.values() if s.state == "lapsed" and product in (None, s.product)], "")

    def deregister(self, product, machine_id):
        machine = self.machines.pop((product, machine_id))
        self.end([s for s in self.sessions.values() if s.row == machine.row], "machine_deactivated")

    # -- the engine API

    def refusal_before_pool(self, person):
        if self.key_revoked[person]:
            return Answer(401, "invalid_api_key")
        if person not in self.members:
            return Answer(404, "organization_not_found")
        return None

    def activate(self, person, product, machine_id, *, ephemeral, release_previous, queue, ticket=None):
        """The answer, and the model as it stands after it: the call's transaction rolls back on a
        refusal, so only a 201 or 202 keeps what the activation did."""
        refusal = self.refusal_before_pool(person)
        if refusal:
            return refusal, self
        if product == "KSE" and person not in self.seats:
            return Answer(403, "not_licensed"), self
        after = copy.deepcopy(self)
        if release_previous:
            after.end(
                [
                    s
                    for s in after.sessions.values()
                    if (s.person, s.product, s.machine_id) == (person, product, machine_id)
                ],
                "released",
            )
        if product == "KSE":
            answer = after._activate_kse(person, machine_id, ephemeral)
        else:
            answer = after._activate_re(person, machine_id, ephemeral, queue, ticket)
        if answer.status in (201, 202):
            return answer, after
        if answer.code == "session_quota_exceeded" and ticket:
            # A wait that ran out ends its ticket with the refusal, outside the rolled-back transaction.
            self.tickets[ticket].state = "gone"
        return answer, self

    def _activate_kse(self, person, machine_id, ephemeral):
        # One licensed user, one session: the earlier one ends, as released on this machine (a
        # restarted Studio), else as signed in elsewhere.
        machine = self.machines.get(("KSE", machine_id))
        for session in self.sessions.values():
            if (session.person, session.product) == (person, "KSE") and session.state != "ended":
                same_machine = machine is not None and session.row == machine.row
                self.end([session], "released" if same_machine else "signed_in_elsewhere")
        return self._machine_slot("KSE", machine_id) or self._grant(
            "KSE", person, machine_id, ephemeral, licenses_used=self.used("KSE")
        )

    def _activate_re(self, person, machine_id, ephemeral, queue, ticket_id):
        free = self.quota["RE"] - self.used("RE")
        waiting = self.waiting()
        ticket = self.tickets.get(ticket_id) if ticket_id else None
        if ticket_id:
            if ticket is None or ticket.state == "gone" or (ticket.person, ticket.machine_id) != (person, machine_id):
                return Answer(404, "ticket_not_found")
            if ticket.state == "wait_over":
                return Answer(409, "session_quota_exceeded")
            position = 1 + sum(1 for t in waiting if t.order < ticket.order)
            may_take = position <= free
        else:
            may_take = free > len(waiting)
            if not may_take and not queue:
                return Answer(409, "session_quota_exceeded", {"waiting": len(waiting)})
        # The machine quota is checked before anyone waits: nobody waits for a license they could
        # not take when their turn came.
        refusal = self._machine_slot("RE", machine_id)
        if refusal:
            return refusal
        if not may_take:
            if ticket is None:
                self.tickets[None] = Ticket(person, machine_id, order=self.next_order)  # named by the 202
                self.next_order += 1
                return Answer(202, details={"position": len(waiting) + 1, "waiting": len(waiting) + 1})
            return Answer(202, details={"position": position, "waiting": len(waiting)})
        if ticket is not None:
            ticket.state = "gone"  # used up by the license it waited for
        return self._grant("RE", person, machine_id, ephemeral, licenses_used=self.used("RE") + 1)

    def _machine_slot(self, product, machine_id):
        """A machine new to the pool: lapsed leases end first (freeing ephemeral machines), then the
        machine quota decides."""
        if (product, machine_id) in self.machines:
            return None
        self.mark_lapsed(product)
        if self.registered(product) >= self.machine_quota[product]:
            return Answer(409, "machine_quota_exceeded")
        return None

    def _grant(self, product, person, machine_id, ephemeral, *, licenses_used):
        machine = self.machines.get((product, machine_id))
        if machine is None:
            machine = self.machines[product, machine_id] = MachineRow(self.next_row, ephemeral, person)
            self.next_row += 1
        machine.ephemeral, machine.person = ephemeral, person
        # Named by the 201's session id once it is known.
        self.sessions[None] = Session(product, person, machine_id, machine.row, self.next_order)
        self.next_order += 1
        return Answer(201, details={"used": licenses_used, "machines": self.registered(product)})

    def heartbeat(self, person, session_id):
        refusal = self._session_refusal(person, session_id)
        if refusal:
            return refusal
        session = self.sessions[session_id]
        if session.state == "live":
            return Answer(200)
        self.end([session], "expired")  # a lapsed lease is marked expired, never revived
        return Answer(410, "session_terminated", {"reason": session.reason})

    def release(self, person, session_id):
        refusal = self._session_refusal(person, session_id)
        if refusal:
            return refusal
        session = self.sessions[session_id]
        if person not in self.members:
            return Answer(410, "session_terminated", {"reason": session.reason})
        self.end([session], "released")
        return Answer(200, details={"end_reason": session.reason})

    def _session_refusal(self, person, session_id):
        if self.key_revoked[person]:
            return Answer(401, "invalid_api_key")
        if self.sessions[session_id].person != person:
            return Answer(404, "session_not_found")
        return None

    # -- admins

    def remove_member(self, person):
        self.end([s for s in self.sessions.values() if s.person == person], "member_removed")
        for key, machine in list(self.machines.items()):
            live_on_it = any(s.row == machine.row and s.state == "live" for s in self.sessions.values())
            if machine.person == person and not live_on_it:
                del self.machines[key]
        self.seats.discard(person)
        for ticket in self.tickets.values():
            if ticket.person == person:
                ticket.state = "gone"
        if self.key_restricted[person]:
            self.key_revoked[person] = True
        self.members.discard(person)

    def change_quota(self, product, quota, machine_quota):
        """None: the pool's terms as they were; a machine quota left out follows the quota when it did."""
        quota = self.quota[product] if quota is None else quota
        if machine_quota is None:
            followed = self.machine_quota[product] == self.quota[product]
            machine_quota = quota if followed else self.machine_quota[product]
        if product == "KSE" and quota < self.used("KSE"):
            return "seat_quota_exceeded"
        self.quota[product], self.machine_quota[product] = quota, machine_quota
        if product == "RE":
            excess = self.used("RE") - quota
            newest = sorted(self.live("RE"), key=lambda s: s.order, reverse=True)
            self.end(newest[: max(0, excess)], "quota_reduced")
        return "changed"

    def create_offline(self, product, lasting):
        if self.quota[product] - self.used(product) <= 0:
            return "session_quota_exceeded"
        self.offline[product].append(lasting)
        return "created"

    def grant_seat(self, person):
        if person not in self.members:
            return "invalid_request"
        if person in self.seats:
            return "already"
        if self.used("KSE") + 1 > self.quota["KSE"]:
            return "seat_quota_exceeded"
        self.seats.add(person)
        return "granted"

    def revoke_seat(self, person):
        if person in self.seats:
            self.seats.discard(person)
            self.end([s for s in self.sessions.values() if (s.person, s.product) == (person, "KSE")], "withdrawn")

    # -- time

    def an_hour_passes(self):
        for session in self.sessions.values():
            if session.state == "live":
                session.state = "lapsed"
        for ticket in self.tickets.values():
            ticket.state = "gone"
        for product in PRODUCTS:
            self.offline[product] = [lasting for lasting in self.offline[product] if lasting == "long"]


# ------------------------------------------------------------------------------------------------
# The machine driving the portal and the model side by side

indexes = st.integers(min_value=0, max_value=63)
people = st.integers(min_value=0, max_value=PEOPLE - 1)
machine_ids = st.sampled_from(MACHINE_IDS)
products = st.sampled_from(PRODUCTS)
quotas = st.integers(min_value=0, max_value=4)

calls = Counter()
steps_per_example = []  # steps each example ran, initialization included


@dataclass
class World:
    """What every example starts from, made once per test: an organization, its owner (signed in to
    the pages), four members, each with an API key restricted to the organization and one that is
    not, and the RE and KSE pools. Each example changes it only inside its own savepoint."""

    organization: object
    owner: object
    people: list
    pools: dict
    keys: dict  # (person, restricted) -> (ApiKey, raw key)
    page: Client
    api: Client
    statements: dict  # name -> (sql, params): what the invariant reads after every step

    def read(self, name):
        """Run one of the invariant's statements. They are compiled once: building a query costs far
        more than running it, and these run 6,000 times a test. (Every "now" in them is the database's,
        read when they run.)"""
        sql, params = self.statements[name]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()


def build_world():
    owner = factories.UserFactory()
    organization = factories.OrganizationFactory(owner=owner)
    people = [factories.MembershipFactory(organization=organization).user for _ in range(PEOPLE)]
    pools = {
        product: factories.LicensePoolFactory(organization=organization, product=product, lease_seconds=LEASE_SECONDS)
        for product in PRODUCTS
    }
    keys = {}
    for person, user in enumerate(people):
        for restricted in (False, True):
            key = factories.ApiKeyFactory(user=user, organization=organization if restricted else None)
            keys[person, restricted] = (key, key.raw_key)
    page = Client()
    page.force_login(owner)
    statements = {
        name: queryset.query.get_compiler(connection=connection).as_sql()
        for name, queryset in (("sessions", sessions_of(organization)), ("facts", facts_of(organization, people)))
    }
    return World(organization, owner, people, pools, keys, page, Client(), statements)


def sessions_of(organization):
    """The organization's sessions, each with whether its lease runs and its machine is registered."""
    return (
        EngineSession.objects.filter(pool__organization=organization)
        .annotate(
            live=ExpressionWrapper(Q(lease_expires_at__gt=Now()), output_field=BooleanField()),
            machine_registered=ExpressionWrapper(Q(machine__deactivated_at__isnull=True), output_field=BooleanField()),
        )
        .values_list("public_id", "pool__product", "user_id", "ended_at", "end_reason", "live", "machine_registered")
    )


def facts_of(organization, people):
    """What the database holds besides sessions, in one statement (this runs after every step):
    registered machines, each pool's terms and unexpired offline licenses, licensed users, waiting
    tickets, members, and the people with a usable key; as (kind, text) rows."""

    def kind(name, queryset, *parts):
        text = Concat(*parts, output_field=CharField()) if len(parts) > 1 else Cast(parts[0], CharField())
        return queryset.order_by().annotate(kind=Value(name), text=text).values_list("kind", "text")

    def field(name):
        return Cast(name, CharField())

    bar = Value("|")
    return (
        kind(
            "machine",
            Machine.objects.registered().filter(pool__organization=organization),
            F("pool__product"),
            bar,
            F("machine_id"),
            bar,
            Case(When(ephemeral=True, then=Value("ephemeral")), default=Value("")),
            bar,
            field("user_id"),
        )
        .union(
            kind(
                "pool",
                LicensePool.objects.filter(organization=organization),
                F("product"),
                bar,
                field("quota"),
                bar,
                field("machine_quota"),
                bar,
                Cast(count_in_pool(OfflineLicense.objects.unexpired()), CharField()),
            ),
            kind("seat", LicensedUser.objects.active().filter(pool__organization=organization), "user_id"),
            kind("waiting", QueueTicket.objects.filter(pool__organization=organization).waiting(), "public_id"),
            kind("member", Membership.objects.active().filter(organization=organization), "user_id"),
            kind("key", ApiKey.objects.usable().filter(user__in=people), "user_id"),
            all=True,
        )
        .order_by()
    )


class LicenseRules(RuleBasedStateMachine):
    world: World  # set by the test before it runs the machine

    def __init__(self):
        super().__init__()
        self.steps = 0
        self._example = transaction.atomic()
        self._example.__enter__()
        # Each example starts with no request counted (rate limits count in local memory).
        caches["default"].clear()
        ratelimit.reset()
        world = self.world
        self.organization, self.owner, self.people, self.pools = (
            world.organization,
            world.owner,
            world.people,
            world.pools,
        )
        self.page, self.api = world.page, world.api
        self.raw_keys = {}
        self.rules = None
        self.before = None  # the limits' figures before the step, to see that none went up past its limit

    def teardown(self):
        steps_per_example.append(self.steps)
        transaction.set_rollback(True)
        self._example.__exit__(None, None, None)

    @initialize(
        re_quota=st.integers(min_value=1, max_value=4),
        re_machines=st.integers(min_value=1, max_value=4),
        kse_quota=st.integers(min_value=1, max_value=3),
        kse_machines=st.integers(min_value=1, max_value=4),
        restricted=st.lists(st.booleans(), min_size=PEOPLE, max_size=PEOPLE),
    )
    def provision(self, re_quota, re_machines, kse_quota, kse_machines, restricted):
        quota, machine_quota = {"RE": re_quota, "KSE": kse_quota}, {"RE": re_machines, "KSE": kse_machines}
        for product in PRODUCTS:
            LicensePool.objects.filter(pk=self.pools[product].pk).update(
                quota=quota[product], machine_quota=machine_quota[product]
            )
        # Each person uses one key: restricted to the organization or not. The other is revoked.
        unused = [self.world.keys[person, not restricted[person]][0].pk for person in range(PEOPLE)]
        ApiKey.objects.filter(pk__in=unused).update(revoked_at=Now())
        self.raw_keys = {person: self.world.keys[person, restricted[person]][1] for person in range(PEOPLE)}
        self.rules = Rules(quota, machine_quota, dict(enumerate(restricted)))

    def new_key(self, person, restricted):
        _key, self.raw_keys[person] = session_actions.create_api_key(
            user=self.people[person],
            name="CI agent",
            organization=self.organization if restricted else None,
            actor=self.people[person],
            ip_address=None,
        )

    # -- helpers

    def call_api(self, kind, person, path, body=None):
        calls[kind] += 1
        response = self.api.post(
            "/api/v1/" + path,
            data=body or {},
            content_type="application/json",
            headers={"Authorization": f"Bearer {self.raw_keys[person]}"},
        )
        assert response.status_code < 500, response.content
        return response

    def check(self, response, expected):
        body = response.json()
        code = body.get("error", {}).get("code", "")
        assert (response.status_code, code) == (expected.status, expected.code), (body, expected)
        return body

    def pick(self, items, index):
        """One of `items`, by a drawn index. Sessions and tickets in the order they came (their ids are
        random, so sorting them would make a run unrepeatable); sets sorted."""
        items = list(items) if isinstance(items, dict | list) else sorted(items)
        return items[index % len(items)]

    def sessions_in(self, *states):
        return [sid for sid, s in self.rules.sessions.items() if s.state in states]

    def tickets_in(self, *states):
        return [tid for tid, t in self.rules.tickets.items() if t.state in states]

    # -- engines

    # Engines are most of what happens: three rules activate (RE, RE asking to wait, KSE).
    @precondition(lambda self: self.rules)
    @rule(
        person=people,
        machine_id=machine_ids,
        ephemeral=st.booleans(),
        release_previous=st.booleans(),
        name_org=st.booleans(),
    )
    def activate_runtime_engine(self, person, machine_id, ephemeral, release_previous, name_org):
        self.activate("RE", person, machine_id, ephemeral, release_previous, False, name_org)

    @precondition(lambda self: self.rules)
    @rule(
        person=people,
        machine_id=machine_ids,
        ephemeral=st.booleans(),
        release_previous=st.booleans(),
        name_org=st.booleans(),
    )
    def activate_runtime_engine_willing_to_wait(self, person, machine_id, ephemeral, release_previous, name_org):
        self.activate("RE", person, machine_id, ephemeral, release_previous, True, name_org)

    @precondition(lambda self: self.rules)
    @rule(
        person=people,
        machine_id=machine_ids,
        ephemeral=st.booleans(),
        release_previous=st.booleans(),
        queue=st.booleans(),
        name_org=st.booleans(),
    )
    def activate_studio(self, person, machine_id, ephemeral, release_previous, queue, name_org):
        self.activate("KSE", person, machine_id, ephemeral, release_previous, queue, name_org)

    def activate(self, product, person, machine_id, ephemeral, release_previous, queue, name_org):
        expected, after = self.rules.activate(
            person, product, machine_id, ephemeral=ephemeral, release_previous=release_previous, queue=queue
        )
        body = {
            "product": product,
            "machine_id": machine_id,
            "ephemeral": ephemeral,
            "release_previous": release_previous,
            "queue": queue,
        }
        if name_org:
            body["org_id"] = self.organization.public_id
        self.answered(self.call_api(f"activate {product}", person, "engine/activate", body), expected, after)

    @precondition(lambda self: self.rules and self.tickets_in("waiting", "wait_over", "gone"))
    @rule(index=indexes, same_machine=st.booleans(), release_previous=st.booleans())
    def poll(self, index, same_machine, release_previous):
        ticket_id = self.pick(self.rules.tickets, index)
        ticket = self.rules.tickets[ticket_id]
        machine_id = ticket.machine_id if same_machine else self.pick(set(MACHINE_IDS) - {ticket.machine_id}, index)
        expected, after = self.rules.activate(
            ticket.person,
            "RE",
            machine_id,
            ephemeral=False,
            release_previous=release_previous,
            queue=True,
            ticket=ticket_id,
        )
        body = {
            "product": "RE",
            "machine_id": machine_id,
            "queue": True,
            "ticket": ticket_id,
            "release_previous": release_previous,
        }
        self.answered(self.call_api("poll", ticket.person, "engine/activate", body), expected, after)

    def answered(self, response, expected, after):
        body = self.check(response, expected)
        if expected.status == 201:
            assert body["usage"]["sessions"]["used"] == expected.details["used"]
            assert body["usage"]["machines"]["used"] == expected.details["machines"]
            after.sessions[body["session"]["id"]] = after.sessions.pop(None)
        elif expected.status == 202:
            figures = body["queued"]
            assert {name: figures[name] for name in expected.details} == expected.details
            if None in after.tickets:
                after.tickets[figures["ticket"]] = after.tickets.pop(None)
        elif expected.details:
            assert {name: body["error"]["details"][name] for name in expected.details} == expected.details
        self.rules = after

    @precondition(lambda self: self.rules and self.rules.sessions)
    @rule(index=indexes, own=st.integers(min_value=0, max_value=4))
    def heartbeat(self, index, own):
        session_id = self.pick(self.rules.sessions, index)
        # Mostly the session's own person; now and then someone else, who must not find it.
        person = self.rules.sessions[session_id].person if own else (index % PEOPLE)
        expected = self.rules.heartbeat(person, session_id)
        body = self.check(self.call_api("heartbeat", person, f"engine/sessions/{session_id}/heartbeat"), expected)
        if expected.details:
            assert body["error"]["details"] == expected.details

    @precondition(lambda self: self.rules and self.rules.sessions)
    @rule(index=indexes, own=st.integers(min_value=0, max_value=4))
    def release(self, index, own):
        session_id = self.pick(self.rules.sessions, index)
        person = self.rules.sessions[session_id].person if own else (index % PEOPLE)
        expected = self.rules.release(person, session_id)
        body = self.check(self.call_api("release", person, f"engine/sessions/{session_id}/release"), expected)
        if expected.status == 200:
            assert body["session"]["end_reason"] == expected.details["end_reason"]
        elif expected.details:
            assert body["error"]["details"] == expected.details

    # -- time

    @precondition(lambda self: self.rules and self.sessions_in("live"))
    @rule(index=indexes)
    def lease_lapses(self, index):
        """One engine stops heartbeating and its lease runs out."""
        calls["lease lapses"] += 1
        session_id = self.pick(self.sessions_in("live"), index)
        behind = timedelta(seconds=LEASE_SECONDS + 1)
        EngineSession.objects.filter(public_id=session_id).update(
            lease_expires_at=F("lease_expires_at") - behind, last_heartbeat_at=F("last_heartbeat_at") - behind
        )
        self.rules.sessions[session_id].state = "lapsed"

    @precondition(
        lambda self: (
            self.rules
            and (
                self.sessions_in("live")
                or self.tickets_in("waiting", "wait_over")
                or "short" in str(self.rules.offline)
            )
        )
    )
    @rule()
    def an_hour_passes(self):
        calls["an hour passes"] += 1
        org = self.organization
        EngineSession.objects.filter(pool__organization=org).update(
            started_at=F("started_at") - HOUR,
            last_heartbeat_at=F("last_heartbeat_at") - HOUR,
            lease_expires_at=F("lease_expires_at") - HOUR,
        )
        QueueTicket.objects.filter(pool__organization=org).update(
            joined_at=F("joined_at") - HOUR,
            last_polled_at=F("last_polled_at") - HOUR,
            poll_before=F("poll_before") - HOUR,
            expires_at=F("expires_at") - HOUR,
        )
        OfflineLicense.objects.filter(pool__organization=org).update(
            issued_at=F("issued_at") - HOUR, expires_at=F("expires_at") - HOUR
        )
        self.rules.an_hour_passes()

    @precondition(lambda self: self.rules and self.tickets_in("waiting", "wait_over"))
    @rule(index=indexes)
    def engine_stops_polling(self, index):
        calls["engine stops polling"] += 1
        ticket_id = self.pick(self.tickets_in("waiting", "wait_over"), index)
        QueueTicket.objects.filter(public_id=ticket_id).update(poll_before=Now() - timedelta(seconds=1))
        self.rules.tickets[ticket_id].state = "gone"

    @precondition(lambda self: self.rules and self.tickets_in("waiting"))
    @rule(index=indexes)
    def wait_runs_out(self, index):
        """A waiting ticket passes its max_wait_seconds while its engine still polls in time."""
        calls["wait runs out"] += 1
        ticket_id = self.pick(self.tickets_in("waiting"), index)
        QueueTicket.objects.filter(public_id=ticket_id).update(expires_at=Now() - timedelta(seconds=1))
        self.rules.tickets[ticket_id].state = "wait_over"

    @precondition(lambda self: self.rules and self.sessions_in("lapsed"))
    @rule()
    def expire_sessions(self):
        calls["expire_sessions"] += 1
        session_actions.expire_sessions()
        self.rules.mark_lapsed()

    # -- admins

    @precondition(lambda self: self.rules and self.rules.sessions)
    @rule(index=indexes)
    def end_session_from_the_page(self, index):
        calls["end session (page)"] += 1
        session_id = self.pick(self.rules.sessions, index)
        session = self.rules.sessions[session_id]
        url = reverse("licenses_end_session", args=[self.organization.public_id, session.product, session_id])
        assert self.page.post(url).status_code == 302
        if session.state == "live":
            self.rules.end([session], "withdrawn")

    @precondition(lambda self: self.rules and self.rules.machines)
    @rule(index=indexes)
    def deactivate_machine_from_the_page(self, index):
        calls["deactivate machine (page)"] += 1
        product, machine_id = self.pick(self.rules.machines, index)
        machine = Machine.objects.registered().get(pool=self.pools[product], machine_id=machine_id)
        url = reverse("licenses_deactivate_machine", args=[self.organization.public_id, product, machine.pk])
        assert self.page.post(url).status_code == 302
        self.rules.deregister(product, machine_id)

    @precondition(lambda self: self.rules and len(self.rules.members) > 1)
    @rule(index=indexes)
    def remove_member(self, index):
        calls["remove member"] += 1
        person = self.pick(self.rules.members, index)
        membership = Membership.objects.active().get(organization=self.organization, user=self.people[person])
        organization_actions.remove_member(
            organization=self.organization, actor=self.owner, membership_id=membership.pk
        )
        self.rules.remove_member(person)

    @precondition(lambda self: self.rules)
    @rule(product=products, quota=quotas | st.none(), machine_quota=quotas | st.none())
    def change_quota(self, product, quota, machine_quota):
        calls[f"change quota {product}"] += 1
        expected = self.rules.change_quota(product, quota, machine_quota)
        pool = LicensePool.objects.get(pk=self.pools[product].pk)
        try:
            license_actions.provision_pool(
                organization=self.organization,
                product=product,
                quota=pool.quota if quota is None else quota,
                machine_quota=machine_quota,
                actor=self.owner,
            )
            outcome = "changed"
        except errors.SeatQuotaExceeded:
            outcome = "seat_quota_exceeded"
        assert outcome == expected

    @precondition(lambda self: self.rules)
    @rule(product=products, lasting=st.sampled_from(sorted(OFFLINE_LASTS)), machine_id=machine_ids)
    def create_offline_license(self, product, lasting, machine_id):
        calls[f"offline license {product}"] += 1
        expected = self.rules.create_offline(product, lasting)
        try:
            license_actions.create_offline_license(
                pool=self.pools[product],
                machine_id=machine_id,
                expires_at=timezone.now() + OFFLINE_LASTS[lasting],
                actor=self.owner,
            )
            outcome = "created"
        except errors.SessionQuotaExceeded:
            outcome = "session_quota_exceeded"
        assert outcome == expected

    @precondition(lambda self: self.rules and len(self.rules.seats) < PEOPLE)
    @rule(person=people)
    def grant_kse_license(self, person):
        calls["grant KSE license"] += 1
        expected = self.rules.grant_seat(person)
        try:
            seats = license_actions.grant_licenses(
                pool=self.pools["KSE"], users=[self.people[person]], actor=self.owner
            )
            outcome = "granted" if seats else "already"
        except errors.LicenseRefusal as refusal:
            outcome = refusal.code
        assert outcome == expected

    @precondition(lambda self: self.rules and self.rules.seats)
    @rule(index=indexes)
    def revoke_kse_license(self, index):
        calls["revoke KSE license"] += 1
        person = self.pick(self.rules.seats, index)
        license_actions.revoke_licenses(pool=self.pools["KSE"], users=[self.people[person]], actor=self.owner)
        self.rules.revoke_seat(person)

    @precondition(lambda self: self.rules and self.rules.tickets)
    @rule(index=indexes)
    def take_ticket_out_of_line(self, index):
        calls["remove ticket"] += 1
        ticket_id = self.pick(self.rules.tickets, index)
        ticket = QueueTicket.objects.get(public_id=ticket_id)
        removed = license_actions.remove_ticket(organization=self.organization, ticket=ticket, actor=self.owner)
        assert removed == (self.rules.tickets[ticket_id].state == "waiting")
        if removed:
            self.rules.tickets[ticket_id].state = "gone"

    # -- people and their keys

    @precondition(lambda self: self.rules and not all(self.rules.key_revoked.values()))
    @rule(index=indexes)
    def revoke_api_key(self, index):
        calls["revoke key"] += 1
        person = self.pick([p for p, revoked in self.rules.key_revoked.items() if not revoked], index)
        api_key = ApiKey.objects.filter(user=self.people[person], revoked_at__isnull=True).latest("pk")
        session_actions.revoke_api_key(api_key=api_key, actor=self.people[person], ip_address=None)
        self.rules.key_revoked[person] = True

    @precondition(lambda self: self.rules and any(self.rules.key_revoked[p] for p in self.rules.members))
    @rule(index=indexes, restricted=st.booleans())
    def create_api_key(self, index, restricted):
        calls["create key"] += 1
        person = self.pick([p for p in self.rules.members if self.rules.key_revoked[p]], index)
        self.new_key(person, restricted)
        self.rules.key_revoked[person], self.rules.key_restricted[person] = False, restricted

    # -- after every step

    @invariant()
    def database_is_the_model_and_within_limits(self):
        if self.rules is None:
            return
        calls["invariant checks"] += 1
        self.steps += 1
        rules = self.rules
        person_of = {user.pk: n for n, user in enumerate(self.people)}

        sessions, live_sessions = {}, []
        for public_id, product, user_id, ended_at, reason, live, machine_registered in self.world.read("sessions"):
            state = ("live" if live else "lapsed") if ended_at is None else "ended"
            sessions[public_id] = (state, reason)
            if state == "live":
                live_sessions.append((product, person_of[user_id]))
                # A license is held on a registered machine, or the machine quota counts nothing.
                assert machine_registered, f"live session {public_id} runs on a deregistered machine"
        assert sessions == {sid: (s.state, s.reason) for sid, s in rules.sessions.items()}

        facts = {"machine": set(), "pool": set(), "seat": set(), "waiting": set(), "member": set(), "key": set()}
        for name, text in self.world.read("facts"):
            facts[name].add(text)
        machines = {}
        for fact in facts["machine"]:
            product, machine_id, ephemeral, user_id = fact.split("|")
            machines[product, machine_id] = (ephemeral == "ephemeral", person_of[int(user_id)])
        assert machines == {key: (m.ephemeral, m.person) for key, m in rules.machines.items()}
        seats = {person_of[int(user_id)] for user_id in facts["seat"]}
        assert seats == rules.seats
        assert facts["waiting"] == {tid for tid, t in rules.tickets.items() if t.state == "waiting"}
        members = {person_of[int(user_id)] for user_id in facts["member"] if int(user_id) in person_of}
        assert members == rules.members
        usable = {person_of[int(user_id)] for user_id in facts["key"]}
        assert usable == {p for p, revoked in rules.key_revoked.items() if not revoked}

        # The limits themselves, read from the database alone.
        figures = {}
        pools = [[int(n) if n.isdigit() else n for n in fact.split("|")] for fact in facts["pool"]]
        for product, quota, machine_quota, offline in pools:
            assert (quota, machine_quota) == (rules.quota[product], rules.machine_quota[product])
            assert offline == len(rules.offline[product])
            held = len(seats) if product == "KSE" else sum(1 for p, _ in live_sessions if p == product)
            figures[product] = (held + offline, sum(1 for p, _ in machines if p == product))
            # Over a limit only when an operator lowered it below what was held; then nothing more is
            # granted until use is back under it.
            if self.before is not None:
                (in_use, registered), (in_use_before, registered_before) = figures[product], self.before[product]
                assert in_use <= max(quota, in_use_before), f"{product}: {in_use} licenses in use, quota {quota}"
                assert registered <= max(machine_quota, registered_before), f"{product}: {registered} machines"
        # A KSE quota is never lowered below its licensed users and offline licenses: it always holds.
        assert figures["KSE"][0] <= rules.quota["KSE"]
        kse_holders = [person for product, person in live_sessions if product == "KSE"]
        assert len(kse_holders) == len(set(kse_holders)), "a licensed user holds two KSE sessions"
        assert set(kse_holders) <= seats
        assert {person for _, person in live_sessions} <= members
        self.before = figures


def test_the_rules_hold_whatever_engines_admins_and_time_do(db):
    LicenseRules.world = build_world()
    calls.clear()
    steps_per_example.clear()
    chosen = profile()
    started, cpu_started = time.perf_counter(), time.process_time()
    # Every example runs all its steps: without this, hypothesis ends some early (a CI run of 200
    # examples ran only 101 to 30 steps). _min_steps is hypothesis's own, if underscored, argument.
    run_state_machine_as_test(LicenseRules, settings=chosen, _min_steps=chosen.stateful_step_count)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    steps = sum(count for kind, count in calls.items() if kind != "invariant checks")
    api_calls = sum(calls[kind] for kind in calls if kind.startswith(("activate", "poll", "heartbeat", "release")))
    record(
        f"stateful model test ({connection.vendor})",
        examples=sum(1 for n in steps_per_example if n == chosen.stateful_step_count),
        examples_cut_short=sum(1 for n in steps_per_example if n < chosen.stateful_step_count),
        steps_per_example=chosen.stateful_step_count,
        steps=steps,
        api_calls=api_calls,
        invariant_checks=calls["invariant checks"],
        violations=0,
        seconds=round(seconds, 1),
        test_process_cpu_seconds=round(cpu_seconds, 1),
        **{kind.replace(" ", "_"): count for kind, count in sorted(calls.items()) if kind != "invariant checks"},
    )
