import csv
import io
from datetime import timedelta

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from licenses import usage_views
from sessions_app.models import EndReason, EngineSession
from tests import factories
from tests.usage.conftest import ended_session, live_session

# An RE pool's page adds two for its refusals and waits (licenses/demand.py), however many.
USAGE_PAGE_QUERIES = 13
USAGE_PAGE_FIRST_QUERIES = 25


def usage_url(organization, **params):
    url = reverse("usage", args=[organization.public_id])
    return url + ("?" + "&".join(f"{key}={value}" for key, value in params.items()) if params else "")


def export_url(organization, **params):
    url = reverse("usage_export", args=[organization.public_id])
    return url + ("?" + "&".join(f"{key}={value}" for key, value in params.items()) if params else "")


def make_history(pool, count, *, user=None, machine=None, reason=EndReason.RELEASED, hours_ago=2):
    user = user or factories.UserFactory()
    machine = machine or factories.MachineFactory(pool=pool)
    now = timezone.now()
    EngineSession.objects.bulk_create(
        ended_session(
            pool,
            user=user,
            machine=machine,
            started_at=now - timedelta(hours=hours_ago, minutes=n % 50),
            ended_at=now - timedelta(hours=1),
            reason=reason,
        )
        for n in range(count)
    )
    return user, machine


def read_csv(response):
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.parametrize("rows", [10, 500])
def test_usage_page_renders_in_a_fixed_number_of_queries(
    owner_client, organization, re_pool, rows, django_assert_max_num_queries
):
    """The usage page costs the same queries for 10 sessions as for 500: no query per row. Its
    first view rolls the finished hours up, in a fixed number of queries too."""
    make_history(re_pool, rows)
    with django_assert_max_num_queries(USAGE_PAGE_FIRST_QUERIES):
        owner_client.get(usage_url(organization))
    with django_assert_max_num_queries(USAGE_PAGE_QUERIES):
        response = owner_client.get(usage_url(organization))
    assert response.status_code == 200
    assert b"Session history" in response.content


def _organization_with_history(sessions):
    owner = factories.UserFactory()
    organization = factories.OrganizationFactory(owner=owner)
    make_history(factories.LicensePoolFactory(organization=organization, product="RE", quota=3), sessions)
    return owner, organization


def test_query_count_does_not_grow_with_rows(db, client):
    """Rendering with 500 sessions takes exactly as many queries as with 10, on the first view
    (which rolls the finished hours up) and on the next."""
    counts = []
    for sessions in (10, 500):
        owner, organization = _organization_with_history(sessions)
        client.force_login(owner)
        for _view in ("first", "next"):
            with CaptureQueriesContext(connection) as queries:
                assert client.get(usage_url(organization)).status_code == 200
            counts.append(len(queries))
    assert counts[:2] == counts[2:]


def test_page_shows_peak_quota_and_chart(owner_client, organization, re_pool):
    """The figures name the peak against the quota, and the chart is an accessible SVG with the
    buckets at quota marked and the data as a table."""
    make_history(re_pool, 3)  # three sessions at once, the pool's whole quota
    response = owner_client.get(usage_url(organization, product="RE", range="24h"))
    html = response.content.decode()
    assert response.status_code == 200
    assert 'role="img"' in html and '<title id="usage-chart-title">' in html and "<desc" in html
    assert "Peak concurrent sessions</dt><dd>3 <small>of 3</small>" in html
    assert html.count('class="bar at-quota"') == 2  # the two hours the three sessions spanned
    assert "Chart data as a table" in html
    assert "style=" not in html and "<script>" not in html


def test_twelve_month_averages_count_only_months_of_the_subscription(owner_client, organization, re_pool, owner):
    """A subscription that began last month is averaged over the months it ran, not over a year of
    months before it existed; the months at quota are counted out of those months too."""
    now = timezone.now()
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    re_pool.starts_at = (this_month - timedelta(days=1)).replace(day=15)  # the middle of last month
    re_pool.save()
    machine = factories.MachineFactory(pool=re_pool)
    EngineSession.objects.bulk_create(
        ended_session(
            re_pool,
            user=owner,
            machine=machine,
            started_at=moment,
            ended_at=moment + timedelta(minutes=30),
        )
        for moment in (re_pool.starts_at + timedelta(days=1), min(this_month + timedelta(hours=1), now))
        if moment + timedelta(minutes=30) < now
    )
    response = owner_client.get(usage_url(organization, range="12m"))
    summary = response.context["summary"]
    assert len(summary.buckets) == 12
    assert [bucket.start.month for bucket in summary.subscribed_buckets] == [
        bucket.start.month for bucket in summary.buckets[-2:]
    ]
    assert summary.average_peak == sum(bucket.peak for bucket in summary.buckets[-2:]) / 2
    assert summary.average_peak > 0
    assert "of 2 (month)" in response.content.decode()


def test_history_lists_sessions_with_their_end(owner_client, organization, re_pool, owner):
    """The history shows who, where, when and why each session ended, and live ones as live."""
    machine = factories.MachineFactory(pool=re_pool, machine_id="agent-77", hostname="agent-77.ci")
    live_session(re_pool, user=owner, machine=machine, started_at=timezone.now() - timedelta(minutes=5)).save()
    make_history(re_pool, 1, reason=EndReason.WITHDRAWN)
    html = owner_client.get(usage_url(organization)).content.decode()
    assert "agent-77" in html and "agent-77.ci" in html and owner.email in html
    assert '<span class="badge ok">live</span>' in html
    assert "Ended by an admin" in html


def test_filters_narrow_the_history(owner_client, organization, re_pool):
    """User, machine and end-reason filters narrow the table."""
    alice = factories.UserFactory(email="alice@example.com")
    bob = factories.UserFactory(email="bob@example.com")
    make_history(re_pool, 2, user=alice)
    make_history(re_pool, 3, user=bob, reason=EndReason.EXPIRED)
    response = owner_client.get(usage_url(organization, user="alice"))
    assert response.context["page"].paginator.count == 2
    response = owner_client.get(usage_url(organization, reason="expired"))
    assert response.context["page"].paginator.count == 3
    assert {row["session"].user.email for row in response.context["rows"]} == {"bob@example.com"}


def test_htmx_request_gets_the_fragment(owner_client, organization, re_pool):
    """An htmx request gets only the results fragment, which carries chart, figures and table."""
    make_history(re_pool, 2)
    response = owner_client.get(usage_url(organization, range="7d"), headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="usage-results">')
    assert "<svg" in html and "Session history" in html and "<html" not in html
    assert "HX-Request" in response["Vary"]


def test_pagination_keeps_the_filter(owner_client, organization, re_pool):
    """Long histories paginate, and the next-page link keeps the filter."""
    make_history(re_pool, 120)
    response = owner_client.get(usage_url(organization, range="7d"))
    html = response.content.decode()
    assert "Page 1 of 3" in html
    assert "range=7d&amp;page=2" in html


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"range": "custom", "start": "2026-05-02", "end": "2026-05-01"},
            "The last day must not be before the first day.",
        ),
        ({"range": "forever"}, "Select a valid choice."),
        ({"start": "not-a-date", "range": "custom", "end": "2026-01-01"}, "Enter a valid date."),
        ({"product": "XYZ"}, "Select a valid choice."),
    ],
)
def test_bad_filters_are_refused_with_a_message(owner_client, organization, re_pool, params, message):
    """A bad filter re-renders the page with a message beside the field, as a 400, never a 500."""
    response = owner_client.get(usage_url(organization, **params))
    assert response.status_code == 400
    assert message in response.content.decode()


def test_organization_without_pools(owner_client, organization):
    """An organization with no pools says so instead of drawing an empty chart."""
    response = owner_client.get(usage_url(organization))
    assert response.status_code == 200
    assert "has no license pools yet" in response.content.decode()


def test_members_may_look(member_client, organization, re_pool):
    """Members see their organization's usage."""
    assert member_client.get(usage_url(organization)).status_code == 200


def test_members_see_the_figures_but_only_their_own_sessions(member_client, member_user, organization, re_pool):
    """The chart counts everyone's sessions; the history and its CSV list only the member's own,
    as the Licenses page does: other people's hosts and machines are for owners and admins."""
    make_history(re_pool, 2, user=member_user)
    someone_else, _ = make_history(re_pool, 3)
    response = member_client.get(usage_url(organization))
    assert response.status_code == 200
    assert response.context["page"].paginator.count == 2
    assert response.context["summary"].peak == 5
    assert someone_else.email not in response.text
    assert "Your sessions" in response.text
    rows = read_csv(member_client.get(export_url(organization)))[1:]
    assert {row[1] for row in rows} == {member_user.email}
    assert len(rows) == 2


def test_another_organizations_usage_is_not_found(owner_client, other_organization):
    """Another organization's usage page and export are 404s, never a 403 that confirms it exists."""
    factories.LicensePoolFactory(organization=other_organization)
    assert owner_client.get(usage_url(other_organization)).status_code == 404
    assert owner_client.get(export_url(other_organization)).status_code == 404


def test_signed_out_people_are_sent_to_sign_in(client, organization):
    """Without a session the page redirects to the sign-in page."""
    response = client.get(usage_url(organization))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_export_is_exactly_the_filtered_history(owner_client, organization, re_pool, other_organization):
    """The CSV holds exactly the rows the filter shows, with a header, streamed."""
    alice = factories.UserFactory(email="alice@example.com", name="Alice")
    bob = factories.UserFactory(email="bob@example.com")
    make_history(re_pool, 4, user=alice)
    make_history(re_pool, 3, user=bob)
    make_history(factories.LicensePoolFactory(organization=other_organization), 5, user=alice)
    response = owner_client.get(export_url(organization, user="alice", range="7d"))
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    header, *rows = read_csv(response)
    assert header[:3] == ["User", "Email", "Session id"]
    page = owner_client.get(usage_url(organization, user="alice", range="7d"))
    shown = [row["session"].public_id for row in page.context["rows"]]
    assert [row[2] for row in rows] == shown
    assert len(rows) == 4 and {row[1] for row in rows} == {"alice@example.com"}
    assert all(row[5] == "RE" and row[9] == "released" and int(row[8]) > 0 for row in rows)


def test_export_marks_live_sessions_and_defuses_formulas(owner_client, organization, re_pool):
    """Live sessions export with no end and reason live; a hostname that looks like a formula is quoted."""
    person = factories.UserFactory(name="=HYPERLINK(1)")
    machine = factories.MachineFactory(pool=re_pool, hostname="+cmd")
    live_session(re_pool, user=person, machine=machine, started_at=timezone.now() - timedelta(minutes=3)).save()
    _header, row = read_csv(owner_client.get(export_url(organization)))
    assert row[0] == "'=HYPERLINK(1)" and row[4] == "'+cmd"
    assert row[7] == "" and row[9] == "live"


def test_export_of_bad_filter_is_refused(owner_client, organization, re_pool):
    """A bad filter on the export is a 400 with the message, not a file."""
    response = owner_client.get(export_url(organization, range="custom", end="2026-05-01"))
    assert response.status_code == 400
    assert "Choose the first day too." in response.content.decode()


@pytest.mark.postgres
def test_export_streams_over_a_server_side_cursor(owner_client, organization, re_pool):
    """On PostgreSQL the export reads through a server-side cursor while it streams, so rows are
    fetched in chunks instead of all at once."""
    make_history(re_pool, 30)
    response = owner_client.get(export_url(organization))
    stream = iter(response.streaming_content)
    next(stream)  # the header
    next(stream)  # the first row: the query is open now
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_cursors")
        open_cursors = cursor.fetchone()[0]
    assert open_cursors >= 1
    assert len(list(stream)) == 29


def test_a_bad_filter_over_htmx_answers_with_the_message_in_the_fragment(owner_client, organization, re_pool):
    """htmx swaps only successful answers, so a bad filter comes back as a fragment naming the problem."""
    response = owner_client.get(
        usage_url(organization, range="custom", start="2026-05-02", end="2026-05-01"), headers={"HX-Request": "true"}
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="usage-results">')
    assert 'role="alert"' in html and "To: The last day must not be before the first day." in html


@pytest.mark.parametrize(
    "params, prompt",
    [
        ({"range": "custom"}, "Choose the first and the last day."),
        ({"range": "custom", "start": "2026-05-01"}, "Choose the last day too."),
    ],
)
def test_choosing_custom_dates_asks_for_the_days_without_an_error(owner_client, organization, re_pool, params, prompt):
    """Choosing "Custom dates" submits the filter before a day can be entered (htmx, on change):
    the page asks for the missing day, calmly, instead of showing two errors."""
    for headers in ({}, {"HX-Request": "true"}):
        response = owner_client.get(usage_url(organization, **params), headers=headers)
        html = response.content.decode()
        assert response.status_code == 200
        assert prompt in html
        assert 'role="alert"' not in html and "errorlist" not in html


def test_a_long_filtered_history_is_counted_only_as_far_as_the_pages_need(
    owner_client, organization, re_pool, monkeypatch
):
    """A filtered history past the counting bound says "more than" and still offers the next page;
    the whole history's count, which comes with the peaks, stays exact."""
    monkeypatch.setattr(usage_views, "HISTORY_COUNT_BOUND", 10)
    alice = factories.UserFactory(email="alice@example.com")
    make_history(re_pool, 120, user=alice)
    html = owner_client.get(usage_url(organization, user="alice")).content.decode()
    assert "More than 100 sessions held a license" in html and 'rel="next"' in html
    html = owner_client.get(usage_url(organization)).content.decode()
    assert "120 sessions held a license" in html and "Page 1 of 3" in html
