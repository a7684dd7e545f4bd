from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from organizations.audit import Action
from organizations.models import AuditEvent
from sessions_app.models import EndReason, EngineSession
from tests import factories
from tests.usage.conftest import live_session


@pytest.fixture
def person(organization, other_organization, re_pool, kse_pool):
    """A member of two organizations: licensed for KSE in the first, which also has RE; the second
    has only RE."""
    person = factories.MembershipFactory(organization=organization, role="member").user
    factories.MembershipFactory(organization=other_organization, user=person, role="admin")
    factories.LicensedUserFactory(pool=kse_pool, user=person)
    factories.LicensePoolFactory(organization=other_organization, product="RE")
    return person


def end_url(session):
    return reverse("end_my_session", args=[session.public_id])


def start_session(pool, user, machine_id="laptop-1"):
    machine = factories.MachineFactory(pool=pool, machine_id=machine_id, user=user)
    session = live_session(pool, user=user, machine=machine, started_at=timezone.now() - timedelta(minutes=10))
    session.save()
    return session


def test_lists_licenses_sessions_and_machines_per_organization(
    client, person, organization, other_organization, re_pool
):
    """Each organization shows the person's KSE seat, RE access, live sessions and machines."""
    session = start_session(re_pool, person, "build-agent-9")
    client.force_login(person)
    html = client.get(reverse("my_licenses")).content.decode()
    assert organization.name in html and other_organization.name in html
    assert "Katalon Studio Enterprise: licensed" in html
    assert html.count("Katalon Runtime Engine: may use") == 2
    assert session.public_id in html
    # Once as the session's machine, once among the registered machines.
    assert html.count('<td class="mono" data-label="Machine id">build-agent-9') == 2


def test_a_person_without_a_seat_sees_it_is_missing(client, organization, kse_pool, member_user):
    """A member without a KSE seat reads that they are not licensed for it."""
    client.force_login(member_user)
    assert "Katalon Studio Enterprise: not licensed" in client.get(reverse("my_licenses")).content.decode()


def test_renders_in_a_fixed_number_of_queries(client, person, re_pool):
    """One session or many, the page takes the same number of queries."""
    client.force_login(person)
    start_session(re_pool, person, "m-0")
    with CaptureQueriesContext(connection) as few:
        client.get(reverse("my_licenses"))
    for n in range(1, 8):
        start_session(re_pool, person, f"m-{n}")
    with CaptureQueriesContext(connection) as many:
        client.get(reverse("my_licenses"))
    assert len(few) == len(many) <= 9


def test_ending_my_session_frees_it(client, person, re_pool):
    """A person ends their own session: it ends as released, and the page says so."""
    session = start_session(re_pool, person)
    client.force_login(person)
    response = client.post(end_url(session), follow=True)
    session.refresh_from_db()
    assert session.end_reason == EndReason.RELEASED and session.ended_at is not None
    assert f"Session {session.public_id} ended" in response.content.decode()
    assert re_pool.sessions.live().count() == 0


def test_ending_my_session_is_in_the_audit_log(client, person, re_pool):
    """The organization's audit log says who ended the session from the portal, and from where."""
    session = start_session(re_pool, person)
    client.force_login(person)
    client.post(end_url(session), REMOTE_ADDR="198.51.100.7")
    event = AuditEvent.objects.get(action=Action.SESSION_ENDED)
    assert (event.organization, event.actor, event.ip_address) == (re_pool.organization, person, "198.51.100.7")
    assert session.public_id in event.target_label


def test_ending_my_session_with_htmx_returns_the_fragment(client, person, re_pool):
    """With htmx the answer is the refreshed list, without the ended session."""
    session = start_session(re_pool, person)
    client.force_login(person)
    response = client.post(end_url(session), headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="my-licenses">')
    assert "No live sessions." in html
    assert EngineSession.objects.get(pk=session.pk).end_reason == EndReason.RELEASED


def test_nobody_ends_another_persons_session(client, person, re_pool, owner):
    """Another person's session is not found, and stays live."""
    session = start_session(re_pool, owner, "owner-box")
    client.force_login(person)
    response = client.post(end_url(session), follow=True)
    assert "No session" in response.content.decode()
    assert EngineSession.objects.get(pk=session.pk).ended_at is None
    response = client.post(end_url(session), headers={"HX-Request": "true"})
    assert 'class="refusal"' in response.content.decode()


def test_a_session_id_with_a_nul_byte_is_not_found(client, person):
    """PostgreSQL refuses strings with NUL: such a session id is a 404, never a 500."""
    client.force_login(person)
    assert client.post("/my-licenses/sessions/s_%00x/end/").status_code == 404


def test_ending_needs_a_post(client, person, re_pool):
    """A GET does not end a session: it asks first."""
    session = start_session(re_pool, person)
    client.force_login(person)
    response = client.get(end_url(session))
    assert response.status_code == 200
    assert "End this session?" in response.text
    assert EngineSession.objects.get(pk=session.pk).ended_at is None


def test_signed_out_people_are_sent_to_sign_in(client):
    """My licenses needs a signed-in person."""
    response = client.get(reverse("my_licenses"))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
