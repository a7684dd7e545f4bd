"""The audit log as a person reads it: each recorded field under a name, moments as moments,
organizations and people by name rather than by id.

Events store what the action recorded (`before`/`after` JSON, written once and never changed);
this module only decides how a page shows it. The CSV export keeps the raw values."""

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.utils.html import format_html, format_html_join

from .models import Organization, Role
from .templatetags.portal_time import absolute, portal_time

# Every key an action records (organizations, licenses, sessions_app, notifications). A key missing
# here is shown with its underscores as spaces, so a new one is readable before it is named.
FIELD_LABELS = {
    "value": "Value",
    "name": "Name",
    "owner": "Owner",
    "email": "Email",
    "role": "Role",
    "previous_owner_role": "Previous owner's new role",
    "invited_by": "Invited by",
    "reason": "Reason",
    "expires_at": "Expires",
    "starts_at": "Starts",
    "joined_at": "Waiting since",
    "previous_secret_valid_until": "Previous secret valid until",
    "quota": "Quota",
    "machine_quota": "Machine quota",
    "lease_seconds": "Lease (seconds)",
    "machine_idle_days": "Deregister idle machines after (days)",
    "machine_allow_list": "Machine allow-list",
    "sessions_ended": "Sessions ended",
    "machines_deactivated": "Machines deactivated",
    "api_keys_revoked": "API keys revoked",
    "kse_seats_revoked": "KSE licenses withdrawn",
    "status": "Status",
    "code": "Refusal code",
    "message": "Message",
    "details": "Figures",
    "product": "Product",
    "machine_id": "Machine id",
    "queued": "Waiting in line",
    "ticket": "Place in line",
    "prefix": "Key prefix",
    "organization": "Organization",
    "url": "URL",
    "description": "Description",
    "event_types": "Events",
    # Inside a refusal's figures.
    "live_sessions": "Live sessions",
    "unexpired_offline": "Offline licenses",
    "licensed_users": "Licensed users",
    "registered_machines": "Registered machines",
    "available": "Available",
    "in_line": "In line",
    "position": "Position",
    "retry_after": "Retry after (seconds)",
}
ROLE_KEYS = {"role", "previous_owner_role"}
ROLE_LABELS = dict(Role.choices)
# Keys whose value is a person's email: shown as "Name (email)" when the person has a name.
PERSON_KEYS = {"owner", "email", "invited_by"}


def field_label(key):
    return FIELD_LABELS.get(key) or key.replace("_", " ").capitalize()


@dataclass(frozen=True)
class Shown:
    """One recorded value, ready for the template: text, or a moment for `portal_time`."""

    text: str = ""
    moment: datetime | None = None

    def __bool__(self):
        return bool(self.text) or self.moment is not None


@dataclass(frozen=True)
class Change:
    label: str
    before: Shown
    after: Shown


class Names:
    """Names for the ids and emails on one page of `organization`'s events, looked up in one query
    per kind (organizations, people), never one per row. Only names the organization already knows
    are shown: its own, and those of people who are or were its members. Anyone else stays the email
    the event recorded, so inviting an address cannot reveal the name of its account elsewhere."""

    def __init__(self, events, organization):
        org_ids, emails, actor_ids = set(), set(), set()
        for event in events:
            if event.actor_id:
                actor_ids.add(event.actor_id)
            for values in (event.before, event.after):
                if isinstance(values, dict):
                    if isinstance(values.get("organization"), str):
                        org_ids.add(values["organization"])
                    emails.update(values[key] for key in PERSON_KEYS if isinstance(values.get(key), str))
        self.organizations = (
            dict(
                Organization.objects.filter(pk=organization.pk, public_id__in=org_ids).values_list("public_id", "name")
            )
            if org_ids
            else {}
        )
        self.people_by_id, self.people_by_email = {}, {}
        if actor_ids or emails:
            known = get_user_model().objects.filter(memberships__organization=organization)
            users = (known.filter(pk__in=actor_ids) | known.filter(email__in=emails)).distinct()
            for pk, name, email in users.values_list("pk", "name", "email"):
                self.people_by_id[pk] = name
                self.people_by_email[email] = name

    def actor(self, event):
        """Who acted, by name with the email kept beside it (the email is what was recorded)."""
        if not event.actor_label:
            return "system", ""
        return self.people_by_id.get(event.actor_id) or event.actor_label, event.actor_label

    def person(self, email):
        name = self.people_by_email.get(email)
        return f"{name} ({email})" if name else email

    def organization(self, public_id):
        return self.organizations.get(public_id, public_id)


# PostgreSQL's jsonb keeps keys in its own order, not the order recorded: fields are listed in
# FIELD_LABELS' order (what an event is about first), unknown ones last.
FIELD_ORDER = {key: index for index, key in enumerate(FIELD_LABELS)}


def changes(before, after, names):
    """A Change for each field the event records whose value differs, in FIELD_LABELS' order.
    Events that record only an outcome (an invitation, a grant) have just `after`."""
    before = _as_dict(before)
    after = _as_dict(after)
    keys = sorted({*before, *after}, key=lambda key: (FIELD_ORDER.get(key, len(FIELD_ORDER)), key))
    return [
        Change(field_label(key), _shown(key, before.get(key), names), _shown(key, after.get(key), names))
        for key in keys
        if before.get(key) != after.get(key)
    ]


def _as_dict(values):
    if isinstance(values, dict):
        return values
    return {} if values is None else {"value": values}


def _shown(key, value, names):
    if value is None or value == "":
        return Shown()
    if isinstance(value, bool):
        return Shown("yes" if value else "no")
    if isinstance(value, str):
        moment = _moment(value) if key.endswith(("_at", "_until")) else None
        if moment is not None:
            return Shown(moment=moment)
        if key in ROLE_KEYS:
            return Shown(str(ROLE_LABELS.get(value, value)))
        if key in PERSON_KEYS:
            return Shown(names.person(value))
        if key == "organization":
            return Shown(names.organization(value))
        if key in {"reason", "status", "code"}:
            return Shown(value.replace("_", " "))
        return Shown(value)
    if isinstance(value, list):
        return Shown(", ".join(str(item) for item in value) or "none")
    if isinstance(value, dict):
        return Shown("; ".join(f"{field_label(k)}: {_text(_shown(k, v, names))}" for k, v in value.items()))
    return Shown(str(value))


def _text(shown):
    if shown.moment is not None:
        return absolute(shown.moment)
    return shown.text or "—"


def _moment(text):
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def changes_html(changes):
    """The changed fields as one <dl>, built here rather than in the template: the audit page
    shows 50 events of up to a dozen fields, and the template engine's per-variable cost
    dominated the page. Long records (more than two fields) fold into a <details>."""
    if not changes:
        return ""
    items = format_html_join(
        "\n", "<dt>{}</dt><dd>{}</dd>", ((change.label, _change_html(change)) for change in changes)
    )
    listing = format_html('<dl class="change">{}</dl>', items)
    if len(changes) <= 2:
        return listing
    names = ", ".join(change.label for change in changes[:3]) + (", …" if len(changes) > 3 else "")
    return format_html(
        '<details class="change-details"><summary>{} fields: {}</summary>{}</details>', len(changes), names, listing
    )


def _change_html(change):
    after = format_html("<ins>{}</ins>", _value_html(change.after)) if change.after else "(none)"
    if not change.before:
        return after
    return format_html("<del>{}</del> → {}", _value_html(change.before), after)


def _value_html(shown):
    return portal_time(shown.moment) if shown.moment is not None else shown.text
