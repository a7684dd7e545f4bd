"""The usage page's refusals and waits (issue 11): per bar of the chart, refused activations and
how long engines waited for a license, so an owner sees when more licenses would pay."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sessions_app.models import QuotaRefusalHour
from sessions_app.queue import count_wait
from tests.usage.test_usage_page import usage_url


def wait(pool, *, minutes_ago, seconds):
    count_wait(pool.pk, granted_at=timezone.now() - timedelta(minutes=minutes_ago), waited=timedelta(seconds=seconds))


@pytest.fixture
def demand(re_pool):
    """Waits of 10 s, 1 min and 5 min an hour or two ago, and refusals in one hour."""
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    for seconds in (10, 60, 300):
        wait(re_pool, minutes_ago=130, seconds=seconds)
    QuotaRefusalHour.objects.create(pool=re_pool, hour=hour, refusals=4)
    return hour


def test_the_page_shows_refusals_and_waits_per_bar(owner_client, organization, re_pool, demand):
    response = owner_client.get(usage_url(organization, product="RE", range="24h"))
    assert response.status_code == 200
    assert response.context["demand"].refused == 4
    assert response.context["demand"].waits == 3
    html = response.content.decode()
    assert "Refused and waiting" in html
    assert "Median wait" in html and "1m 00s" in html and "5m 00s" in html
    rows = response.context["demand_rows"]
    assert sum(row["refused"] for row in rows) == 4 and sum(row["waits"] for row in rows) == 3
    assert all(row["refused"] or row["waits"] for row in rows)


def test_a_member_sees_the_pools_figures_too(member_client, organization, re_pool, demand):
    response = member_client.get(usage_url(organization, product="RE", range="24h"))
    assert response.context["demand"].waits == 3


def test_a_pool_without_demand_says_so(owner_client, organization, re_pool):
    html = owner_client.get(usage_url(organization, product="RE", range="7d")).content.decode()
    assert "No activation was refused or had to wait in the last 7 days." in html


def test_kse_has_no_such_figures(owner_client, organization, kse_pool):
    response = owner_client.get(usage_url(organization, product="KSE"))
    assert "demand" not in response.context
    assert "Refused and waiting" not in response.content.decode()


def test_many_waits_cost_no_more_queries_than_few(
    owner_client, organization, re_pool, demand, django_assert_num_queries
):
    owner_client.get(usage_url(organization, product="RE", range="24h"))  # rolls the finished hours up
    with CaptureQueriesContext(connection) as few:
        owner_client.get(usage_url(organization, product="RE", range="24h"))
    for n in range(200):
        wait(re_pool, minutes_ago=n % 600, seconds=n * 7)
    with django_assert_num_queries(len(few.captured_queries)):
        response = owner_client.get(usage_url(organization, product="RE", range="24h"))
    assert response.context["demand"].waits == 203
