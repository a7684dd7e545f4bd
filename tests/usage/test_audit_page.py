import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from organizations import audit_views
from organizations.audit import Action, record
from organizations.models import AuditEvent
from tests import factories

# Session, user, membership, count, page, and one for the names of the page's people
# (audit_display.Names); a page that records organizations by id adds one for their names.
AUDIT_PAGE_QUERIES = 7


def audit_url(organization, **params):
    url = reverse("audit_log", args=[organization.public_id])
    return url + ("?" + "&".join(f"{key}={value}" for key, value in params.items()) if params else "")


def export_url(organization, **params):
    url = reverse("audit_export", args=[organization.public_id])
    return url + ("?" + "&".join(f"{key}={value}" for key, value in params.items()) if params else "")


def make_events(organization, count, *, actor=None, action=Action.LICENSE_GRANTED, when=None, **fields):
    when = when or timezone.now()
    fields.setdefault("target_label", "someone@example.com")
    AuditEvent.objects.bulk_create(
        AuditEvent(
            organization=organization,
            actor=actor,
            actor_label=actor.email if actor else "",
            action=action,
            target_type="user",
            target_id=str(n),
            ip_address="203.0.113.7",
            created_at=when - timedelta(seconds=n),
            **fields,
        )
        for n in range(count)
    )


def read_csv(response):
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.parametrize("rows", [10, 500])
def test_audit_page_renders_in_a_fixed_number_of_queries(
    owner_client, organization, owner, rows, django_assert_max_num_queries
):
    """The audit page costs the same queries for 10 events as for 500."""
    make_events(organization, rows, actor=owner)
    with django_assert_max_num_queries(AUDIT_PAGE_QUERIES):
        response = owner_client.get(audit_url(organization))
    assert response.status_code == 200


def test_query_count_does_not_grow_with_rows(owner_client, organization, owner):
    """Rendering 500 events takes exactly as many queries as 10."""
    make_events(organization, 10, actor=owner)
    with CaptureQueriesContext(connection) as few:
        owner_client.get(audit_url(organization))
    make_events(organization, 490, actor=owner)
    with CaptureQueriesContext(connection) as many:
        owner_client.get(audit_url(organization))
    assert len(few) == len(many)


def test_an_event_shows_who_what_whom_when_where_and_the_change(admin_client, organization, owner):
    """Each event reads as who did what to whom, when, from which address, with before and after."""
    with transaction.atomic():
        record(
            organization=organization,
            actor=owner,
            action=Action.MEMBER_ROLE_CHANGED,
            target_label="mia@example.com",
            before={"role": "member"},
            after={"role": "admin"},
            ip_address="198.51.100.4",
        )
    html = admin_client.get(audit_url(organization)).content.decode()
    assert owner.email in html
    assert "Changed a role" in html
    assert "mia@example.com" in html
    assert "198.51.100.4" in html
    assert "<dt>Role</dt>" in html
    assert "<del>Member</del> → <ins>Admin</ins>" in html


def test_changes_read_as_named_fields_with_names_and_formatted_moments(
    admin_client, organization, owner, django_assert_max_num_queries
):
    """The Change column names each field, shows moments in the portal's format, an organization by
    its name rather than its id and people by name; a long record folds into <details>. The names
    of a whole page cost one query per kind, not one per row."""
    owner.name = "Olivia Owner"
    owner.save()
    now = timezone.now()
    AuditEvent.objects.bulk_create(
        AuditEvent(
            organization=organization,
            actor=owner,
            actor_label=owner.email,
            action=action,
            target_label=label,
            before=before,
            after=after,
            created_at=now - timedelta(seconds=n),
        )
        for n, (action, label, before, after) in enumerate(
            [
                (
                    Action.OWNERSHIP_TRANSFERRED,
                    "someone@example.com",
                    {"owner": owner.email},
                    {"owner": "someone@example.com", "previous_owner_role": "admin"},
                )
            ]
            + [
                (
                    Action.API_KEY_CREATED,
                    f"API key ci-{n}",
                    None,
                    {
                        "name": f"ci-{n}",
                        "prefix": "kat_ab12",
                        "organization": organization.public_id,
                        "expires_at": "2026-12-08T08:57:59.941197+00:00",
                    },
                )
                for n in range(30)
            ]
        )
    )
    with django_assert_max_num_queries(AUDIT_PAGE_QUERIES + 1):
        html = admin_client.get(audit_url(organization)).content.decode()
    assert "<dt>Expires</dt>" in html and "<dt>expires_at</dt>" not in html
    assert '<time datetime="2026-12-08T08:57:59.941197+00:00">2026-12-08 08:57 UTC</time>' in html
    assert f"<dt>Organization</dt><dd><ins>{organization.name}</ins></dd>" in html
    assert f"<ins>{organization.public_id}</ins>" not in html
    assert "<summary>4 fields: Name, Expires, Key prefix, …</summary>" in html
    assert "<dt>Owner</dt>" in html and "<del>Olivia Owner (" in html
    assert "<dt>Previous owner&#x27;s new role</dt>" in html and "<ins>Admin</ins>" in html
    assert ">Olivia Owner<br>" in html


def test_people_and_organizations_outside_the_organization_keep_the_recorded_ids(
    owner_client, organization, other_organization, owner
):
    """An invitation records the email invited; when that address has an account elsewhere, the log
    does not reveal the account's name (an admin could otherwise learn any account's name by inviting
    its address). Another organization's id stays an id too."""
    stranger = factories.MembershipFactory(organization=other_organization).user
    stranger.name = "Sally Stranger"
    stranger.save()
    with transaction.atomic():
        record(
            organization=organization,
            actor=owner,
            action=Action.MEMBER_INVITED,
            target_label=stranger.email,
            after={"email": stranger.email, "organization": other_organization.public_id},
        )
    html = owner_client.get(audit_url(organization)).content.decode()
    assert stranger.email in html and other_organization.public_id in html
    assert "Sally Stranger" not in html and other_organization.name not in html


def test_filters_by_actor_action_and_date(owner_client, organization, owner, admin_user):
    """Who, what and the date range narrow the list."""
    make_events(organization, 3, actor=owner, action=Action.LICENSE_GRANTED)
    make_events(organization, 2, actor=admin_user, action=Action.LICENSE_REVOKED)
    make_events(
        organization, 4, actor=admin_user, action=Action.LICENSE_REVOKED, when=datetime(2026, 1, 15, 12, tzinfo=UTC)
    )
    count = lambda **params: owner_client.get(audit_url(organization, **params)).context["page"].paginator.count  # noqa: E731
    assert count() == 9
    assert count(actor=owner.email) == 3
    assert count(action=Action.LICENSE_REVOKED) == 6
    assert count(start="2026-01-15", end="2026-01-15") == 4
    assert count(start="2026-01-16") == 5


def test_bad_dates_are_refused(owner_client, organization):
    """A range ending before it starts is a 400 with the message beside the field."""
    response = owner_client.get(audit_url(organization, start="2026-02-02", end="2026-02-01"))
    assert response.status_code == 400
    assert "The last day must not be before the first day." in response.content.decode()


def test_the_last_representable_day_is_an_open_end(owner_client, organization, owner):
    """A range ending on 9999-12-31 lists everything since its start instead of failing."""
    make_events(organization, 2, actor=owner)
    response = owner_client.get(audit_url(organization, end="9999-12-31"))
    assert response.status_code == 200
    assert response.context["page"].paginator.count == 2
    export = owner_client.get(export_url(organization, end="9999-12-31"))
    assert export.status_code == 200
    assert len(b"".join(export.streaming_content).decode().splitlines()) == 3


def test_the_page_offers_no_way_to_change_events(owner_client, organization, owner):
    """The log is read-only: no form posts anywhere but sign-out, and a POST is refused."""
    make_events(organization, 3, actor=owner)
    html = owner_client.get(audit_url(organization)).content.decode()
    assert html.count('method="post"') == 1  # the sign-out button in the header
    assert owner_client.post(audit_url(organization)).status_code == 405


def test_members_are_forbidden(member_client, organization):
    """Members may not read the audit log or export it."""
    assert member_client.get(audit_url(organization)).status_code == 403
    assert member_client.get(export_url(organization)).status_code == 403


def test_another_organizations_log_is_not_found(owner_client, other_organization):
    """Another organization's audit log is a 404."""
    make_events(other_organization, 2)
    assert owner_client.get(audit_url(other_organization)).status_code == 404
    assert owner_client.get(export_url(other_organization)).status_code == 404


def test_only_this_organizations_events_are_listed(owner_client, organization, other_organization, owner):
    """Events of other organizations never show."""
    make_events(other_organization, 5, actor=owner, target_label="secret@rival.example")
    html = owner_client.get(audit_url(organization)).content.decode()
    assert "secret@rival.example" not in html


def test_export_is_exactly_the_filtered_events(owner_client, organization, other_organization, owner, admin_user):
    """The CSV streams exactly the filtered events, newest first, with before and after as JSON."""
    make_events(organization, 3, actor=owner, action=Action.LICENSE_GRANTED)
    make_events(organization, 2, actor=admin_user, action=Action.LICENSE_REVOKED, after={"seat": "revoked"})
    make_events(other_organization, 4, actor=admin_user, action=Action.LICENSE_REVOKED)
    response = owner_client.get(export_url(organization, action=Action.LICENSE_REVOKED))
    assert isinstance(response, StreamingHttpResponse)
    header, *rows = read_csv(response)
    assert header[0] == "When (UTC)"
    assert len(rows) == 2
    assert all(row[1] == admin_user.email and row[3] == Action.LICENSE_REVOKED for row in rows)
    assert all(
        row[2] == "Withdrew a license" and row[7] == "203.0.113.7" and row[9] == '{"seat": "revoked"}' for row in rows
    )
    expected = list(
        AuditEvent.objects.for_org(organization)
        .filter(action=Action.LICENSE_REVOKED)
        .values_list("target_id", flat=True)
    )
    assert [row[6] for row in rows] == expected


def test_a_long_log_is_counted_only_as_far_as_the_pages_need(owner_client, organization, owner, monkeypatch):
    """Past the counting bound the page says "more than" and offers the next page, without counting
    every event; paging on counts further, and near the end the count is exact again."""
    monkeypatch.setattr(audit_views, "AUDIT_COUNT_BOUND", 20)
    make_events(organization, 120, actor=owner)
    html = owner_client.get(audit_url(organization)).content.decode()
    assert "More than 100 events." in html
    assert "Page 1 of more than 2" in html and 'rel="next"' in html
    response = owner_client.get(audit_url(organization, page=2))
    html = response.content.decode()
    assert "120 events." in html and "Page 2 of 3" in html
    assert len(response.context["rows"]) == 50
    response = owner_client.get(audit_url(organization, page=3))
    assert len(response.context["rows"]) == 20 and 'rel="next"' not in response.content.decode()


def test_a_log_within_the_bound_is_counted_exactly(owner_client, organization, owner, monkeypatch):
    monkeypatch.setattr(audit_views, "AUDIT_COUNT_BOUND", 200)
    make_events(organization, 120, actor=owner)
    html = owner_client.get(audit_url(organization, actor=owner.email)).content.decode()
    assert "120 events." in html and "Page 1 of 3" in html
