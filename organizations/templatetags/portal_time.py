"""One way to show a moment on every page: `{{ value|portal_time }}`.

Every timestamp renders as a <time> element in the portal's zone (settings.TIME_ZONE), with the
zone written out, so a reader never wonders whether 14:02 is theirs or the server's:

    {{ moment|portal_time }}            2026-12-01 14:02 UTC
    {{ moment|portal_time:"seconds" }}  2026-12-01 14:02:03 UTC   (heartbeats, events)
    {{ moment|portal_time:"date" }}     2026-12-01                (the full moment in its title)
    {{ moment|portal_time:"relative" }} 5 min ago                 (the full moment in its title)
    {{ moment|portal_time:"text" }}     2026-12-01 14:02 UTC      (plain text, where no element may go)
    {{ moment|portal_time:"age" }}      at 14:02:03 UTC           (app.js turns it into "12 s ago" and keeps it current)

Relative times carry data-relative, so app.js keeps them current on a page left open.
Registered as a template builtin (settings.TEMPLATES), so no template needs to load it."""

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.html import format_html

register = template.Library()

FORMATS = {"minutes": "%Y-%m-%d %H:%M", "seconds": "%Y-%m-%d %H:%M:%S", "date": "%Y-%m-%d"}
# Past this, "43 days ago" says less than the date itself.
RELATIVE_LIMIT_SECONDS = 30 * 86400


def absolute(moment: datetime, style: str = "minutes") -> str:
    """The moment as text in the portal's zone, zone included (a date alone has no zone)."""
    local = timezone.localtime(moment)
    text = local.strftime(FORMATS[style])
    return text if style == "date" else f"{text} {local.tzname()}"


def relative(moment: datetime, now: datetime | None = None) -> str:
    """'just now', '45 s ago', '5 min ago', '3 h ago', '2 days ago', or 'in …' for the future;
    the absolute moment past a month. Never '0 minutes ago'."""
    seconds = int(((now or timezone.now()) - moment).total_seconds())
    if abs(seconds) >= RELATIVE_LIMIT_SECONDS:
        return absolute(moment)
    if abs(seconds) < 5:
        return "just now"
    amount = abs(seconds)
    if amount < 60:
        span = f"{amount} s"
    elif amount < 3600:
        span = f"{amount // 60} min"
    elif amount < 86400:
        span = f"{amount // 3600} h"
    else:
        days = amount // 86400
        span = f"{days} day{'s' if days != 1 else ''}"
    return f"{span} ago" if seconds > 0 else f"in {span}"


@register.filter
def portal_time(moment, style="minutes"):
    if not isinstance(moment, datetime):
        return "" if moment in (None, "") else moment
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, timezone.get_default_timezone())
    if style == "text":
        return absolute(moment)
    iso = moment.isoformat()
    full = absolute(moment, "seconds")
    if style == "relative":
        return format_html('<time datetime="{}" title="{}" data-relative>{}</time>', iso, full, relative(moment))
    if style == "age":
        # Without JavaScript the page does not refresh, so it says when it was drawn, not "just now".
        clock = timezone.localtime(moment)
        return format_html(
            '<time datetime="{}" title="{}" data-relative>at {} {}</time>',
            iso,
            full,
            clock.strftime("%H:%M:%S"),
            clock.tzname(),
        )
    if style == "date":
        return format_html('<time datetime="{}" title="{}">{}</time>', iso, full, absolute(moment, "date"))
    return format_html('<time datetime="{}">{}</time>', iso, absolute(moment, style))
