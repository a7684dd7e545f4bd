"""The usage page (peak chart and session history), its CSV export, and "My licenses"."""

from collections import defaultdict

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from organizations.audit import client_ip
from organizations.confirm import Confirmation, ask_to_confirm
from organizations.csv_stream import streaming_csv_response
from organizations.htmx import render_filtered
from organizations.models import Membership
from organizations.pagination import LongListPaginator
from organizations.permissions import org_member_required
from sessions_app.actions import release_session
from sessions_app.models import EngineSession, Machine

from .demand import demand_by_bar
from .errors import LicenseRefusal
from .models import LicensedUser, LicensePool, Product
from .usage import LIVE, Chart, UsageSummary, format_duration, history, usage_in_period
from .usage_forms import REASON_CHOICES, UsageFilterForm

HISTORY_PAGE_SIZE = 50
# Past this many sessions a filtered history says "more than" instead of counting them all.
HISTORY_COUNT_BOUND = 10_000
REASON_LABELS = dict(REASON_CHOICES)
EXPORT_CHUNK_SIZE = 2000
CSV_HEADER = [
    "User",
    "Email",
    "Session id",
    "Machine id",
    "Host",
    "Product",
    "Started (UTC)",
    "Ended (UTC)",
    "Duration (seconds)",
    "End reason",
]


def _timestamp(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


# Runtime Engine first: its floating licenses are where concurrent use decides what to buy.
PRODUCT_ORDER = [Product.RE, Product.KSE]


def _read_filter(request, now):
    """The organization's pools by product, the bound filter form, and the page's base context."""
    organization = request.organization
    pools = {pool.product: pool for pool in LicensePool.objects.for_org(organization)}
    products = [(product.value, product.label) for product in PRODUCT_ORDER if product.value in pools]
    form = UsageFilterForm(request.GET, products=products, now=now)
    context = {
        "organization": organization,
        "form": form,
        "pools": pools,
        "usage_url": reverse("usage", args=[organization.public_id]),
    }
    return pools, form, context


def _filtered_history(request, pool, filters, now):
    sessions = history(
        pool=pool,
        period=filters["period"],
        now=now,
        user_text=filters["user"],
        machine_text=filters["machine"],
        reason=filters["reason"],
    )
    # Members see the pool's figures but, as on the Licenses page, only their own sessions.
    return sessions if request.membership.can_manage else sessions.filter(user=request.user)


def _wait_text(wait):
    return format_duration(wait) if wait is not None else "—"


def _demand_context(pool, period, buckets):
    """Refusals and waits (licenses/demand.py) for the RE pool's page: the period's figures, and the
    bars that had any, beside their peaks. KSE never refuses for the session quota nor queues."""
    if pool.product != Product.RE:
        return {}
    bars, overall = demand_by_bar(pool=pool, period=period)
    return {
        "demand": overall,
        "demand_median": _wait_text(overall.median_wait),
        "demand_p95": _wait_text(overall.p95_wait),
        "demand_rows": [
            {
                "start": bucket.start,
                "peak": bucket.peak,
                "refused": bar.refused,
                "waits": bar.waits,
                "median": _wait_text(bar.median_wait),
                "p95": _wait_text(bar.p95_wait),
            }
            for bucket, bar in zip(buckets, bars, strict=True)
            if bar.refused or bar.waits
        ],
    }


@require_GET
@org_member_required
def usage(request):
    now = timezone.now()
    pools, form, context = _read_filter(request, now)
    status = 200
    if pools and form.is_valid() and form.awaiting_dates:
        context["awaiting_dates"] = form.awaiting_dates
    elif pools and form.is_valid():
        filters = form.cleaned_data
        pool, period = pools[filters["product"]], filters["period"]
        used = usage_in_period(pool=pool, period=period, now=now)
        summary = UsageSummary(
            buckets=used.buckets,
            quota=pool.quota,
            granularity=period.granularity,
            subscription_start=pool.starts_at,
            subscription_end=pool.expires_at,
        )
        context.update(_demand_context(pool, period, used.buckets))
        sessions = _filtered_history(request, pool, filters, now).select_related("user", "machine")
        # Counting a million sessions would take longer than the rest of the page: the whole
        # history's count comes with the peaks, and a filtered one is counted only so far.
        whole_history = request.membership.can_manage and not any(
            filters[name] for name in ("user", "machine", "reason")
        )
        paginator = LongListPaginator(
            sessions, HISTORY_PAGE_SIZE, count=used.sessions_held if whole_history else None, bound=HISTORY_COUNT_BOUND
        )
        page = paginator.get_page(request.GET.get("page"))
        context.update(
            pool=pool,
            period=period,
            summary=summary,
            chart=Chart(summary),
            live_now=pool.sessions.live().count(),
            page=page,
            rows=[
                {
                    "session": session,
                    "is_live": session.status == LIVE,
                    "reason": REASON_LABELS.get(session.status, session.status),
                    "duration": format_duration(session.held_until - session.started_at),
                }
                for session in page
            ],
        )
    elif pools:
        status = 400
    return render_filtered(request, "usage/usage.html", "results", context, status=status)


@require_GET
@org_member_required
def usage_export(request):
    """The filtered session history as CSV, streamed over a chunked query (a server-side cursor on
    PostgreSQL), so a million rows take neither the request's memory nor a timeout."""
    now = timezone.now()
    pools, form, context = _read_filter(request, now)
    if not pools or not form.is_valid() or form.awaiting_dates:
        context["awaiting_dates"] = form.awaiting_dates
        return render(request, "usage/usage.html", context, status=400)
    filters = form.cleaned_data
    pool, period = pools[filters["product"]], filters["period"]
    sessions = _filtered_history(request, pool, filters, now).values_list(
        "user__name",
        "user__email",
        "public_id",
        "machine__machine_id",
        "hostname",
        "started_at",
        "held_until",
        "status",
    )
    rows = (
        [
            name,
            email,
            session_id,
            machine_id,
            host,
            pool.product,
            _timestamp(started),
            "" if status == LIVE else _timestamp(held_until),
            int((held_until - started).total_seconds()),
            status,
        ]
        for name, email, session_id, machine_id, host, started, held_until, status in sessions.iterator(
            chunk_size=EXPORT_CHUNK_SIZE
        )
    )
    organization = request.organization
    filename = f"sessions-{organization.public_id}-{pool.product}-{period.start:%Y%m%d}-{period.end:%Y%m%d}.csv"
    return streaming_csv_response(header=CSV_HEADER, rows=rows, filename=filename)


def _my_licenses_context(user):
    """Per organization of the person: their KSE seat, RE access, live sessions and machines.
    Five queries whatever the number of organizations, sessions or machines."""
    memberships = list(
        Membership.objects.active().filter(user=user).select_related("organization").order_by("organization__name")
    )
    organization_ids = [membership.organization_id for membership in memberships]
    pools = defaultdict(dict)
    for pool in LicensePool.objects.filter(organization_id__in=organization_ids):
        pools[pool.organization_id][pool.product] = pool
    seat_pool_ids = set(
        LicensedUser.objects.active()
        .filter(user=user, pool__organization_id__in=organization_ids)
        .values_list("pool_id", flat=True)
    )
    sessions = defaultdict(list)
    for session in (
        EngineSession.objects.live()
        .filter(user=user, pool__organization_id__in=organization_ids)
        .select_related("pool", "machine")
        .order_by("-started_at")
    ):
        sessions[session.pool.organization_id].append(session)
    machines = defaultdict(list)
    for machine in (
        Machine.objects.registered()
        .filter(user=user, pool__organization_id__in=organization_ids)
        .select_related("pool")
        .order_by("pool__product", "machine_id")
    ):
        machines[machine.pool.organization_id].append(machine)
    entries = []
    for membership in memberships:
        org_pools = pools[membership.organization_id]
        kse_pool, re_pool = org_pools.get(Product.KSE), org_pools.get(Product.RE)
        entries.append(
            {
                "membership": membership,
                "organization": membership.organization,
                "kse_pool": kse_pool,
                "has_kse_seat": kse_pool is not None and kse_pool.pk in seat_pool_ids,
                "re_pool": re_pool,
                "sessions": sessions[membership.organization_id],
                "machines": machines[membership.organization_id],
            }
        )
    return {"entries": entries}


@login_required
@require_GET
def my_licenses(request):
    return render(request, "usage/my_licenses.html", _my_licenses_context(request.user))


@login_required
@require_http_methods(["GET", "POST"])
def end_my_session(request, session_id):
    """A person ends one of their own sessions (reason `released`), as `katalonc -licenseRelease` would.
    GET asks first."""
    if request.method == "GET":
        session = get_object_or_404(
            EngineSession.objects.live().filter(user=request.user).select_related("machine", "pool"),
            public_id=session_id,
        )
        return ask_to_confirm(
            request,
            Confirmation(
                title="End this session?",
                consequence=(
                    f"Your {session.pool.product} engine on {session.machine.machine_id} loses its license at once "
                    "and stops at its next heartbeat."
                ),
                button="End session",
                action_url=request.path,
                cancel_url=reverse("my_licenses"),
                hx_target="#my-licenses",
            ),
        )
    refusal = None
    try:
        release_session(user=request.user, session_id=session_id, ip_address=client_ip(request), by_person=True)
    except LicenseRefusal as error:
        refusal = error.message
    if request.htmx:
        context = _my_licenses_context(request.user)
        context["refusal"] = refusal
        context["ended"] = None if refusal else session_id
        # htmx swaps only 2xx answers, so a refusal travels in the fragment, beside the sessions.
        return render(request, "usage/my_licenses.html#licenses", context)
    if refusal:
        messages.error(request, refusal)
    else:
        messages.success(request, f"Session {session_id} ended; its license is free.")
    return redirect("my_licenses")
