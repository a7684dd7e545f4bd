"""The audit log: read-only, for owners and admins, filterable, paginated and exportable."""

import json

from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from .audit import Action
from .audit_display import Names, changes, changes_html
from .audit_forms import AuditFilterForm
from .csv_stream import streaming_csv_response
from .htmx import render_filtered
from .models import AuditEvent
from .pagination import LongListPaginator
from .permissions import org_manager_required

AUDIT_PAGE_SIZE = 50
# Counting every event of a long log on every page would cost more than the page: past this many
# matches the page says "more than".
AUDIT_COUNT_BOUND = 10_000
EXPORT_CHUNK_SIZE = 2000
CSV_HEADER = [
    "When (UTC)",
    "Who",
    "What",
    "Action code",
    "On",
    "Target type",
    "Target id",
    "Address",
    "Before",
    "After",
]


def _events(request, form):
    return form.filter(AuditEvent.objects.for_org(request.organization)).order_by("-created_at", "-id")


@require_GET
@org_manager_required
def audit_log(request):
    form = AuditFilterForm(request.GET)
    context = {
        "organization": request.organization,
        "form": form,
        "audit_url": reverse("audit_log", args=[request.organization.public_id]),
    }
    status = 200
    if form.is_valid():
        paginator = LongListPaginator(_events(request, form), AUDIT_PAGE_SIZE, bound=AUDIT_COUNT_BOUND)
        page = paginator.get_page(request.GET.get("page"))
        events = list(page)
        names = Names(events, request.organization)
        context["page"] = page
        context["rows"] = [
            {
                "event": event,
                **dict(zip(("actor_name", "actor_email"), names.actor(event), strict=True)),
                "label": Action.LABELS.get(event.action, event.action),
                "changes": changes_html(changes(event.before, event.after, names)),
            }
            for event in events
        ]
    else:
        status = 400
    return render_filtered(request, "audit/audit_log.html", "events", context, status=status)


@require_GET
@org_manager_required
def audit_export(request):
    """The filtered events as CSV, streamed over a chunked query (a server-side cursor on PostgreSQL)."""
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        context = {
            "organization": request.organization,
            "form": form,
            "audit_url": reverse("audit_log", args=[request.organization.public_id]),
        }
        return render(request, "audit/audit_log.html", context, status=400)
    events = _events(request, form).values_list(
        "created_at",
        "actor_label",
        "action",
        "target_label",
        "target_type",
        "target_id",
        "ip_address",
        "before",
        "after",
    )
    rows = (
        [
            created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            actor or "system",
            Action.LABELS.get(action, action),
            action,
            target,
            target_type,
            target_id,
            address or "",
            "" if before is None else json.dumps(before, sort_keys=True),
            "" if after is None else json.dumps(after, sort_keys=True),
        ]
        for created_at, actor, action, target, target_type, target_id, address, before, after in events.iterator(
            chunk_size=EXPORT_CHUNK_SIZE
        )
    )
    return streaming_csv_response(header=CSV_HEADER, rows=rows, filename=f"audit-{request.organization.public_id}.csv")
