"""The Licenses pages: one tab per product. Every write is one action; with htmx the changed section
comes back with the subscription figures out-of-band, without it a plain post and redirect."""

from datetime import UTC, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import reswap, retarget

from organizations.audit import client_ip
from organizations.confirm import Confirmation, ask_to_confirm
from organizations.pagination import LongListPaginator
from organizations.permissions import org_manager_required, org_member_required
from sessions_app.models import EngineSession, Machine

from . import actions
from .errors import LicenseRefusal
from .forms import ChooserSearchForm, GrantForm, OfflineLicenseForm, RevokeForm
from .models import LicensePool, OfflineLicense, Product

TEMPLATE = "licenses/product.html"
PAGE_SIZE = 25
PAGE_PARAMS = ("seats_page", "sessions_page", "line_page", "machines_page", "offline_page")
CHOOSER_TEMPLATE = "licenses/assign.html"
CHOOSER_PAGE_SIZE = 20
# The chooser counts candidates no further than this (a COUNT over 10,000 members on every
# keystroke buys nothing): past it, it says "more than".
CHOOSER_COUNT_BOUND = 500


@org_member_required
def licenses(request):
    pool = LicensePool.objects.for_org(request.organization).order_by("product").first()
    if pool is not None:
        return redirect("licenses_product", request.organization.public_id, pool.product)
    return render(request, "licenses/no_pools.html")


# Sections a page may fetch again on its own: the live sessions refresh themselves every 45 s.
REFRESHABLE_SECTIONS = {"sessions"}


@require_GET
@org_member_required
def product_page(request, product):
    pool = _pool_or_404(request, product)
    section = request.GET.get("section")
    if request.htmx and section in REFRESHABLE_SECTIONS and request.membership.can_manage:
        context = _context(request, pool, sections={section})
        response = render(request, f"{TEMPLATE}#{section}", context)
    else:
        response = render(request, TEMPLATE, _context(request, pool))
    # The same address answers with the page or, for htmx, one section: caches keep them apart.
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_GET
@org_manager_required
def assign(request, product):
    """The "Assign licenses" chooser: members without a license, searched and paged on the server,
    ticked and posted to `grant`. A page of its own without JavaScript; with htmx, the chooser alone
    (into the KSE tab's dialog), or only its results for a search or another page."""
    pool = _pool_or_404(request, product, kse_only=True)
    search = ChooserSearchForm(request.GET)
    context = _chooser_context(request, pool, search)
    if request.htmx and request.htmx.target == "chooser-results":
        response = render(request, f"{CHOOSER_TEMPLATE}#chooser-results", context)
    else:
        context["usage"] = pool.usage()
        if request.htmx:
            response = render(request, f"{CHOOSER_TEMPLATE}#chooser", context | {"in_dialog": True})
        else:
            response = render(request, CHOOSER_TEMPLATE, context)
    # The same address answers with a page or a fragment: caches keep them apart.
    patch_vary_headers(response, ["HX-Request", "HX-Target"])
    return response


def _chooser_context(request, pool, search, *, chosen=(), refusal=None):
    """One query for the page of candidates and one bounded count; `chosen` (the people of a refused
    grant, shown ticked above the results) costs one more. The licenses left (`usage`, one query) are
    the caller's to add where the whole chooser is shown, not for each search's results."""
    search.is_valid()  # a field in error is left out of cleaned_data; the others still apply
    query = search.cleaned_data.get("q") or ""
    chosen_ids = [user.pk for user in chosen]
    candidates = (
        pool.unlicensed_members(query)
        .exclude(user_id__in=chosen_ids)
        .values_list("user_id", "user__name", "user__email")
    )
    paginator = LongListPaginator(candidates, CHOOSER_PAGE_SIZE, bound=CHOOSER_COUNT_BOUND)
    page = paginator.get_page(search.cleaned_data.get("page"))
    base = reverse("licenses_assign", args=[request.organization.public_id, pool.product])

    def link(number):
        return base + "?" + urlencode({"q": query, "page": number} if query else {"page": number})

    page.previous_link = link(page.previous_page_number()) if page.has_previous() else None
    page.next_link = link(page.next_page_number()) if page.has_next() else None
    return {
        "pool": pool,
        "org_id": request.organization.public_id,
        "search_form": search,
        "query": query,
        "candidates": page,
        "chosen": [(user.pk, user.name, user.email) for user in chosen],
        "grant_refusal": refusal,
    }


@require_POST
@org_manager_required
def grant(request, product):
    pool = _pool_or_404(request, product, kse_only=True)
    form = GrantForm(request.POST, organization=request.organization)
    refusal = notice = None
    if form.is_valid():
        chosen = form.cleaned_data["users"]
        try:
            seats = actions.grant_licenses(pool=pool, users=chosen, actor=request.user, ip_address=client_ip(request))
        except LicenseRefusal as error:
            refusal = error.message
        else:
            notice = _granted_notice(seats, len(chosen))
    else:
        refusal = _first_error(form)
    if refusal is not None:
        # Back to the chooser, with the refusal beside the button and the people chosen still ticked.
        chosen = sorted(form.cleaned_data.get("users", []), key=lambda user: (user.sort_key, user.email))
        context = _chooser_context(request, pool, ChooserSearchForm({}), chosen=chosen, refusal=refusal)
        context["usage"] = pool.usage()
        if request.htmx:
            response = render(request, f"{CHOOSER_TEMPLATE}#chooser", context | {"in_dialog": True})
            return reswap(retarget(response, "#chooser"), "outerHTML")
        return render(request, CHOOSER_TEMPLATE, context)
    if not request.htmx:
        messages.success(request, notice)
        return redirect("licenses_product", request.organization.public_id, pool.product)
    return _respond(request, pool, "licensed_users", oob=("subscription",), extra={"seats_notice": notice})


@require_http_methods(["GET", "POST"])
@org_manager_required
def revoke(request, product):
    """GET asks first (naming whose licenses go); POST withdraws them."""
    pool = _pool_or_404(request, product, kse_only=True)
    form = RevokeForm(request.POST if request.method == "POST" else request.GET, pool=pool)
    refusal = notice = None
    if request.method == "GET" and form.is_valid():
        users = sorted(form.cleaned_data["users"], key=lambda user: (user.sort_key, user.email))
        names = [user.display_name for user in users]
        return ask_to_confirm(
            request,
            Confirmation(
                title="Withdraw " + ("this license?" if len(users) == 1 else f"{len(users)} licenses?"),
                consequence=(
                    f"{_join_names(names)} will no longer be licensed for Katalon Studio Enterprise: "
                    "a session they run now ends at once, and each license becomes available."
                ),
                button="Withdraw license" if len(users) == 1 else f"Withdraw {len(users)} licenses",
                action_url=reverse("licenses_revoke", args=[request.organization.public_id, pool.product]),
                cancel_url=_product_url(request, pool),
                hx_target="#licensed-users",
                hidden=[("users", str(user.pk)) for user in users],
            ),
        )
    if form.is_valid():
        seats = actions.revoke_licenses(
            pool=pool, users=form.cleaned_data["users"], actor=request.user, ip_address=client_ip(request)
        )
        names = ", ".join(seat.user.display_name for seat in seats)
        notice = f"Withdrew the license of {names}." if seats else "Nobody chosen still held a license."
    else:
        refusal = _first_error(form)
    if refusal is None and not request.htmx:
        messages.success(request, notice)
        return redirect("licenses_product", request.organization.public_id, pool.product)
    response = _respond(
        request,
        pool,
        "licensed_users",
        oob=("subscription", "sessions", "machines"),
        extra={"revoke_refusal": refusal, "seats_notice": notice},
    )
    if request.htmx and request.method == "GET":
        # Asked from a button that targets the dialog: the refusal belongs beside the list.
        response["HX-Retarget"] = "#licensed-users"
        response["HX-Reswap"] = "outerHTML"
    return response


@require_http_methods(["GET", "POST"])
@org_manager_required
def end_session(request, product, session_id):
    """GET asks first; POST ends the session."""
    pool = _pool_or_404(request, product)
    session = get_object_or_404(pool.sessions.select_related("machine", "user"), public_id=session_id)
    if request.method == "GET":
        return ask_to_confirm(
            request,
            Confirmation(
                title="End this session?",
                consequence=(
                    f"The {pool.product} engine of {session.user.display_name} on {session.machine.machine_id} "
                    "loses its license at once; it is told at its next heartbeat and the license is free for others."
                ),
                button="End session",
                action_url=request.path,
                cancel_url=_product_url(request, pool),
                hx_target="#online-licenses",
            ),
        )
    ended = actions.withdraw_session(
        organization=request.organization, session=session, actor=request.user, ip_address=client_ip(request)
    )
    if ended:
        notice = f"Ended the session on {session.machine.machine_id}; its license is free."
    else:
        notice = f"The session on {session.machine.machine_id} had already ended."
    if not request.htmx:
        messages.success(request, notice)
        return redirect("licenses_product", request.organization.public_id, pool.product)
    return _respond(request, pool, "sessions", oob=("subscription", "machines"), extra={"sessions_notice": notice})


@require_http_methods(["GET", "POST"])
@org_manager_required
def remove_from_line(request, product, ticket_id):
    """GET asks first; POST takes a waiting engine out of the RE pool's line, and the ones behind it
    move up."""
    pool = _pool_or_404(request, product)
    ticket = get_object_or_404(pool.queue_tickets.select_related("user"), public_id=ticket_id)
    if request.method == "GET":
        return ask_to_confirm(
            request,
            Confirmation(
                title="Take this engine out of the line?",
                consequence=(
                    f"The engine of {ticket.user.display_name} on {ticket.machine_id} loses its place and is told "
                    "so at its next request; asking again puts it at the end of the line."
                ),
                button="Remove from line",
                action_url=request.path,
                cancel_url=_product_url(request, pool),
                hx_target="#queue-line",
            ),
        )
    removed = actions.remove_ticket(
        organization=request.organization, ticket=ticket, actor=request.user, ip_address=client_ip(request)
    )
    who = f"{ticket.machine_id} of {ticket.user.display_name}"
    if removed:
        notice = f"Took {who} out of the line; its next request is told so, and the engines behind it moved up."
    else:
        notice = f"{who} was no longer waiting."
    if not request.htmx:
        messages.success(request, notice)
        return redirect("licenses_product", request.organization.public_id, pool.product)
    return _respond(request, pool, "line", extra={"line_notice": notice})


@require_http_methods(["GET", "POST"])
@org_manager_required
def deactivate(request, product, machine_pk):
    """GET asks first; POST deactivates the machine."""
    pool = _pool_or_404(request, product)
    machine = get_object_or_404(pool.machines.all(), pk=machine_pk)
    if request.method == "GET":
        live = EngineSession.objects.live().filter(machine=machine).count()
        sessions = {0: "it runs no session now", 1: "its live session ends at once"}.get(
            live, f"its {live} live sessions end at once"
        )
        return ask_to_confirm(
            request,
            Confirmation(
                title="Deactivate this machine?",
                consequence=(
                    f"{machine.machine_id} leaves the registered machines: {sessions}, and its machine slot "
                    "is freed. It registers again the next time an engine activates on it."
                ),
                button="Deactivate machine",
                action_url=request.path,
                cancel_url=_product_url(request, pool),
                hx_target="#machines",
            ),
        )
    deactivated = actions.deactivate_machine(machine=machine, actor=request.user, ip_address=client_ip(request))
    if deactivated:
        notice = f"Deactivated {machine.machine_id}; its sessions ended and its machine slot is free."
    else:
        notice = f"{machine.machine_id} was no longer registered."
    if not request.htmx:
        messages.success(request, notice)
        return redirect("licenses_product", request.organization.public_id, pool.product)
    return _respond(request, pool, "machines", oob=("subscription", "sessions"), extra={"machines_notice": notice})


@require_POST
@org_manager_required
def create_offline(request, product):
    """Two posts: the form's asks first, spelling out the cost (a license until it expires, for
    good); the confirmation's, which carries `confirmed`, creates. The action checks the quota again
    then, under the pool's lock."""
    pool = _pool_or_404(request, product)
    form = OfflineLicenseForm(request.POST, pool=pool)
    refusal = created = None
    if form.is_valid() and not request.POST.get("confirmed"):
        return ask_to_confirm(request, _offline_confirmation(request, pool, form))
    if form.is_valid():
        try:
            created = actions.create_offline_license(
                pool=pool,
                machine_id=form.cleaned_data["machine_id"],
                expires_at=form.expires_at,
                actor=request.user,
                ip_address=client_ip(request),
            )
        except LicenseRefusal as error:
            refusal = error.message
    if created is not None and not request.htmx:
        messages.success(request, f"Created an offline license for {created.machine_id}: download it below.")
        return redirect("licenses_product", request.organization.public_id, pool.product)
    extra = {"offline_refusal": refusal, "offline_created": created}
    if created is None:
        extra["offline_form"] = form
    return _respond(request, pool, "offline", oob=("subscription",), extra=extra)


def _offline_confirmation(request, pool, form):
    usage = pool.usage()
    expires_at = form.expires_at.astimezone(UTC)
    # The last instant of the chosen day reads as that day: 31 Dec 2026, not 1 Jan 2027 00:00.
    last_day = (expires_at - timedelta(microseconds=1)).date()
    machine_id = form.cleaned_data["machine_id"]
    return Confirmation(
        title="Create an offline license?",
        consequence=(
            f"It takes 1 of {usage.quota} {pool.product} licenses until {last_day.day} {last_day:%b %Y} (UTC), "
            "and cannot be revoked."
        ),
        details=[
            f"For the machine {machine_id} only.",
            f"Available now: {usage.available} of {usage.quota}; after this: {max(usage.available - 1, 0)}.",
        ],
        button="Create offline license",
        danger=False,
        action_url=reverse("licenses_offline_create", args=[request.organization.public_id, pool.product]),
        cancel_url=_product_url(request, pool),
        hx_target="#offline-licenses",
        hidden=[
            ("machine_id", machine_id),
            ("expires_on", form.cleaned_data["expires_on"].isoformat()),
            ("confirmed", "yes"),
        ],
    )


def _product_url(request, pool):
    return reverse("licenses_product", args=[request.organization.public_id, pool.product])


def _join_names(names):
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@require_GET
@org_manager_required
def download_offline(request, product, license_id):
    pool = _pool_or_404(request, product)
    offline = get_object_or_404(pool.offline_licenses.select_related("pool"), license_id=license_id)
    return HttpResponse(
        offline.file_content,
        content_type="application/json; charset=utf-8",
        headers={"Content-Disposition": content_disposition_header(True, offline.filename)},
    )


def _pool_or_404(request, product, *, kse_only=False):
    if product not in Product.values or (kse_only and product != Product.KSE):
        raise Http404("No such product.")
    return get_object_or_404(LicensePool.objects.for_org(request.organization), product=product)


def _first_error(form):
    return next(message for errors in form.errors.values() for message in errors)


def _granted_notice(seats, chosen_count):
    if not seats:
        return "Everyone chosen already holds a license."
    names = ", ".join(seat.user.display_name for seat in seats)
    skipped = chosen_count - len(seats)
    return f"Licensed {names}." + (f" {skipped} already held a license." if skipped else "")


def _respond(request, pool, section, *, oob=(), extra=None):
    """htmx: the changed section, then the others it affects, out-of-band. Without htmx (a refusal
    to show beside its form): the whole page."""
    if not request.htmx:
        return render(request, TEMPLATE, _context(request, pool, extra=extra))
    context = _context(request, pool, sections={section, *oob}, extra=extra)
    html = render_to_string(f"{TEMPLATE}#{section}", context, request)
    for name in oob:
        html += render_to_string(f"{TEMPLATE}#{name}", context | {"oob": True}, request)
    return HttpResponse(html)


def _page_params(request):
    """Which page of each list the person is on: from the query string, or for an htmx post from
    the page it was made on, so a section re-rendered in place stays on its page."""
    query = request.GET
    if request.htmx and request.htmx.current_url:
        query = {key: values[-1] for key, values in parse_qs(urlsplit(request.htmx.current_url).query).items()}
    return {name: query.get(name) for name in PAGE_PARAMS if query.get(name)}


def _paginate(queryset, params, name):
    page = Paginator(queryset, PAGE_SIZE).get_page(params.get(name))

    def link(number):
        return "?" + urlencode(params | {name: number})

    page.previous_link = link(page.previous_page_number()) if page.has_previous() else None
    page.next_link = link(page.next_page_number()) if page.has_next() else None
    return page


def _context(request, pool, *, sections=None, extra=None):
    """What the template needs for `sections` (all of them when None). Every list is one query for
    its page plus one for its count, whatever its length."""
    everything = sections is None
    wanted = set() if everything else set(sections)
    manager = request.membership.can_manage
    params = _page_params(request)
    context = {"pool": pool, "org_id": request.organization.public_id, "can_manage": manager}
    if everything:
        context["pools"] = list(LicensePool.objects.for_org(request.organization).order_by("product"))
    if everything or "subscription" in wanted:
        context["usage"] = pool.usage()
    if not manager:
        context["my_seat"] = pool.licensed_users.active().filter(user=request.user).first()
        context["my_sessions"] = list(
            pool.sessions.live().filter(user=request.user).select_related("machine").order_by("-started_at")[:50]
        )
        if pool.product == Product.RE:
            context["my_line"] = list(pool.queue_tickets.in_line().filter(user=request.user)[:50])
        return context | (extra or {})
    if pool.product == Product.RE and (everything or "line" in wanted):
        context["line"] = _paginate(pool.queue_tickets.in_line().select_related("user"), params, "line_page")
    if pool.product == Product.KSE and (everything or "licensed_users" in wanted):
        seats = (
            pool.licensed_users.active().select_related("user", "granted_by").order_by("user__sort_key", "user__email")
        )
        context["seats"] = _paginate(seats, params, "seats_page")
    if everything or "sessions" in wanted:
        live = pool.sessions.live().select_related("user", "machine").order_by("-started_at", "-id")
        context["sessions"] = _paginate(live, params, "sessions_page")
        context["refreshed_at"] = timezone.now()
    if everything or "machines" in wanted:
        # Counted per listed machine by a subquery (PostgreSQL runs it for the page's rows only, on
        # the (machine, ended_at) index): a COUNT over a join of every registered machine with every
        # session it ever had took seconds with 10,000 machines and a year of sessions.
        live_sessions = (
            EngineSession.objects.live()
            .filter(machine=OuterRef("pk"))
            .order_by()
            .values("machine")
            .annotate(n=Count("pk"))
            .values("n")
        )
        registered = (
            Machine.objects.filter(pool=pool)
            .registered()
            .select_related("user")
            .annotate(live_session_count=Coalesce(Subquery(live_sessions), 0))
            .order_by("-last_seen_at", "-id")
        )
        context["machines"] = _paginate(registered, params, "machines_page")
    if everything or "offline" in wanted:
        offline = OfflineLicense.objects.filter(pool=pool).select_related("issued_by").order_by("-issued_at", "-id")
        context["offline_licenses"] = _paginate(offline, params, "offline_page")
        context["offline_form"] = OfflineLicenseForm(pool=pool)
    return context | (extra or {})
