"""What the mails say: what happened, the figures, and a link to the page that fixes it. Rendered by
the worker, which has no request, so links are made from PORTAL_URL."""

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse

from licenses.models import Product

from .event_types import EventType

LIMIT_WORDS = {"sessions": "online licenses", "machines": "registered machines", "licensed_users": "licensed users"}


@dataclass(frozen=True)
class Description:
    summary: str  # one sentence, also the subject of a single alert
    figures: list  # (label, value) pairs
    link_label: str
    link: str


def absolute(path):
    return settings.PORTAL_URL + path


def _product(data):
    code = data.get("product") or data.get("pool", {}).get("product")
    return Product(code).label if code in Product.values else (code or "")


def _day(value):
    return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d") if value else ""


def _who(person):
    if not person:
        return "somebody"
    return f"{person['name']} ({person['email']})" if person.get("name") else person["email"]


def describe(event):
    """The Description of one event, for its mail and for the daily digest."""
    data, org_id, org = event.data, event.organization.public_id, event.organization.name
    pool = data.get("pool", {})
    product_code = data.get("product") or pool.get("product")
    licenses_url = absolute(
        reverse("licenses_product", args=[org_id, product_code])
        if product_code in Product.values
        else reverse("licenses", args=[org_id])
    )
    licenses = ("Open the licenses page", licenses_url)
    audit = ("Open the audit log", absolute(reverse("audit_log", args=[org_id])))
    members = ("Open the members page", absolute(reverse("members", args=[org_id])))
    by = [("By", data["actor"])] if data.get("actor") else []
    match event.type:
        case EventType.QUOTA_REACHED:
            limit = LIMIT_WORDS.get(data.get("limit"), "licenses")
            figures = [("Quota", pool.get("quota")), ("Machine quota", pool.get("machine_quota"))]
            figures += [
                (key.replace("_", " ").capitalize(), value)
                for key, value in data.get("figures", {}).items()
                if key != "quota"  # shown with the pool's terms above
            ]
            refused = data.get("refused", {})
            # An engine that asked to wait was put in line rather than refused (sessions_app/queue.py).
            queued = data.get("queued")
            if refused.get("machine_id"):
                figures.append(("Waiting machine" if queued else "Refused machine", refused["machine_id"]))
            if refused.get("user"):
                figures.append(("Waiting for" if queued else "Refused for", refused["user"]))
            outcome = "an engine waits in line" if queued else "a request was refused"
            return Description(
                f"{org}: {_product(data)} {limit} are used up; {outcome}",
                [("What happened", data.get("message", "")), *figures],
                "Free a license or deactivate a machine, or buy more",
                licenses_url,
            )
        case EventType.QUOTA_WARNING:
            return Description(
                f"{org}: {_product(data)} use reached {data.get('percent')}% of the quota today",
                [("Peak today", f"{data.get('peak')} of {pool.get('quota')}"), ("Day", data.get("date"))],
                "See usage over time",
                absolute(reverse("usage", args=[org_id])),
            )
        case EventType.SUBSCRIPTION_EXPIRING:
            days = data.get("days_left")
            return Description(
                f"{org}: the {_product(data)} subscription ends in {days} day{'s' if days != 1 else ''}",
                [("Ends", _day(pool.get("expires_at"))), ("Quota", pool.get("quota"))],
                "Renew before it ends; see the subscription",
                licenses_url,
            )
        case EventType.SUBSCRIPTION_ENDED:
            return Description(
                f"{org}: the {_product(data)} subscription has ended; engines are refused",
                [("Ended", _day(pool.get("expires_at"))), ("Quota", pool.get("quota"))],
                "See the subscription",
                licenses_url,
            )
        case EventType.OFFLINE_LICENSE_EXPIRING:
            offline = data.get("offline_license", {})
            return Description(
                f"{org}: the offline license for {offline.get('machine_id')} expires in {data.get('days_left')} days",
                [("License", offline.get("license_id")), ("Expires", _day(offline.get("expires_at")))],
                "Create a new offline license",
                licenses_url,
            )
        case EventType.SEAT_GRANTED | EventType.SEAT_REVOKED:
            verb = "was granted" if event.type == EventType.SEAT_GRANTED else "no longer holds"
            return Description(f"{org}: {_who(data.get('user'))} {verb} a {_product(data)} license", by, *licenses)
        case EventType.SESSION_WITHDRAWN:
            session = data.get("session", {})
            return Description(
                f"{org}: the session of {_who(session.get('user'))} on {session.get('machine_id')} was ended",
                [("Session", session.get("id")), *by],
                *licenses,
            )
        case EventType.MACHINE_DEACTIVATED:
            machine = data.get("machine", {})
            return Description(
                f"{org}: machine {machine.get('machine_id')} was deactivated",
                [("Sessions ended", data.get("sessions_ended")), *by],
                *licenses,
            )
        case EventType.MEMBER_JOINED:
            return Description(f"{org}: {_who(data.get('user'))} joined as {data.get('role')}", [], *members)
        case EventType.MEMBER_REMOVED:
            return Description(
                f"{org}: {_who(data.get('user'))} was removed",
                [
                    ("Sessions ended", data.get("sessions_ended")),
                    ("API keys revoked", data.get("api_keys_revoked")),
                    *by,
                ],
                *members,
            )
        case EventType.API_KEY_CREATED | EventType.API_KEY_REVOKED:
            key = data.get("api_key", {})
            verb = "created" if event.type == EventType.API_KEY_CREATED else "revoked"
            return Description(
                f"{org}: API key {key.get('name')} ({key.get('prefix')}…) of {_who(key.get('user'))} was {verb}",
                by,
                *audit,
            )
    return Description(f"{org}: {event.type}", [], *audit)


def preferences_link(organization):
    return absolute(reverse("notifications", args=[organization.public_id]))


def alert(event):
    """(subject, body) of the mail about one event."""
    description = describe(event)
    body = render_to_string(
        "notifications/email/alert.txt",
        {
            "event": event,
            "description": description,
            "preferences_link": preferences_link(event.organization),
        },
    )
    return description.summary, body


def digest(organization, day, events):
    """(subject, body) of one person's daily digest of `events`."""
    entries = [(event, describe(event)) for event in events]
    subject = f"{organization.name}: {len(entries)} event{'s' if len(entries) != 1 else ''} on {day:%Y-%m-%d}"
    body = render_to_string(
        "notifications/email/digest.txt",
        {
            "organization": organization,
            "day": day,
            "entries": entries,
            "preferences_link": preferences_link(organization),
        },
    )
    return subject, body


def endpoint_disabled(endpoint):
    subject = f"{endpoint.organization.name}: a webhook endpoint was disabled after 24 hours of failures"
    body = render_to_string(
        "notifications/email/endpoint_disabled.txt",
        {
            "endpoint": endpoint,
            "organization": endpoint.organization,
            "link": absolute(reverse("notifications_endpoint", args=[endpoint.organization.public_id, endpoint.pk])),
        },
    )
    return subject, body
