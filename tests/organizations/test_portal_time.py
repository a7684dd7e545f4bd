from datetime import UTC, datetime, timedelta

import pytest
from django.template import Context, Template
from django.test import override_settings

from organizations.templatetags.portal_time import relative

MOMENT = datetime(2026, 12, 1, 14, 2, 3, tzinfo=UTC)


def render(source, **context):
    return Template(source).render(Context(context))


def test_a_moment_shows_in_the_portals_zone_with_the_zone_named_in_a_time_element():
    """Every page writes a moment one way: a <time> with the exact instant, and the zone spelled out."""
    assert (
        render("{{ m|portal_time }}", m=MOMENT)
        == '<time datetime="2026-12-01T14:02:03+00:00">2026-12-01 14:02 UTC</time>'
    )
    assert render('{{ m|portal_time:"seconds" }}', m=MOMENT).endswith(">2026-12-01 14:02:03 UTC</time>")


@override_settings(TIME_ZONE="Europe/Berlin")
def test_a_portal_in_another_zone_shows_its_own_zone():
    """An installation that sets TIME_ZONE shows its local time and says which zone it is."""
    assert ">2026-12-01 15:02 CET</time>" in render("{{ m|portal_time }}", m=MOMENT)


def test_dates_and_relative_times_keep_the_full_moment_in_their_title():
    """A date or '5 min ago' alone hides the moment: hovering shows it, with its zone."""
    assert render('{{ m|portal_time:"date" }}', m=MOMENT) == (
        '<time datetime="2026-12-01T14:02:03+00:00" title="2026-12-01 14:02:03 UTC">2026-12-01</time>'
    )
    assert 'title="2026-12-01 14:02:03 UTC"' in render('{{ m|portal_time:"relative" }}', m=MOMENT)


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (timedelta(seconds=2), "just now"),
        (timedelta(seconds=45), "45 s ago"),
        (timedelta(minutes=5, seconds=59), "5 min ago"),
        (timedelta(hours=3, minutes=10), "3 h ago"),
        (timedelta(days=1, hours=2), "1 day ago"),
        (timedelta(days=12), "12 days ago"),
        (timedelta(minutes=-10), "in 10 min"),
        (timedelta(days=40), "2026-10-22 14:02 UTC"),
    ],
)
def test_relative_times_read_naturally_and_never_say_zero_minutes(ago, text):
    """Short spans in the unit a person would use; past a month, the date itself."""
    assert relative(MOMENT - ago, now=MOMENT) == text


def test_nothing_to_show_shows_nothing():
    """An empty value renders empty rather than raising: templates guard with {% if %} anyway."""
    assert render("{{ m|portal_time }}", m=None) == ""
