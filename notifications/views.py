"""The Notifications page (owners and admins): one's own email alerts, and the organization's webhook
endpoints with their delivery log. Every write is one action; with htmx the changed section comes
back in place, without it a plain post, then a redirect, or the page with the error beside the form.
A new or rolled signing secret is rendered, never redirected to: it exists only in that response."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import OuterRef, Subquery
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from organizations.audit import client_ip
from organizations.confirm import Confirmation, ask_to_confirm
from organizations.limits import shorten
from organizations.permissions import org_manager_required

from . import actions
from .forms import AlertPreferenceForm, EndpointForm
from .models import AlertPreference, Endpoint, Status, WebhookDelivery

PAGE = "notifications/notifications.html"
ENDPOINT_PAGE = "notifications/endpoint.html"
DELIVERIES_PER_PAGE = 25


def _alert_form(request):
    preference = AlertPreference.objects.filter(organization=request.organization, user=request.user).first()
    preference = preference or AlertPreference.default(organization=request.organization, user=request.user)
    return AlertPreferenceForm(initial={"event_types": preference.event_types, "daily_digest": preference.daily_digest})


def _page(request, *, fragment=None, status=200, **context):
    latest = WebhookDelivery.objects.filter(endpoint=OuterRef("pk")).order_by("-created_at", "-pk")
    endpoints = (
        Endpoint.objects.for_org(request.organization)
        .annotate(
            last_delivery_at=Subquery(latest.values("created_at")[:1]),
            last_delivery_status=Subquery(latest.values("status")[:1]),
        )
        .order_by("created_at", "pk")
    )
    context = {
        "alert_form": _alert_form(request),
        "endpoint_form": EndpointForm(),
        "endpoints": endpoints,
        "org_id": request.organization.public_id,
        **context,
    }
    if request.htmx and fragment:
        return render(request, f"{PAGE}#{fragment}", context)
    return render(request, PAGE, context, status=status)


@require_GET
@org_manager_required
def notifications(request):
    return _page(request)


@require_POST
@org_manager_required
def save_alerts(request):
    form = AlertPreferenceForm(request.POST)
    if not form.is_valid():
        return _page(request, fragment="alerts", status=400, alert_form=form)
    actions.save_alert_preference(
        organization=request.organization,
        user=request.user,
        event_types=form.cleaned_data["event_types"],
        daily_digest=form.cleaned_data["daily_digest"],
    )
    notice = "Saved your email alerts."
    if not request.htmx:
        messages.success(request, notice)
        return redirect("notifications", request.organization.public_id)
    return _page(request, fragment="alerts", alerts_notice=notice)


@require_POST
@org_manager_required
def create_endpoint(request):
    form = EndpointForm(request.POST)
    if not form.is_valid():
        return _page(request, fragment="endpoints", status=400, endpoint_form=form)
    endpoint, secret = actions.create_endpoint(
        organization=request.organization,
        actor=request.user,
        url=form.cleaned_data["url"],
        description=form.cleaned_data["description"],
        event_types=form.chosen_event_types,
        ip_address=client_ip(request),
    )
    return _page(request, fragment="endpoints", created=endpoint, secret=secret)


def _endpoint_or_404(request, endpoint_id):
    return get_object_or_404(Endpoint.objects.for_org(request.organization), pk=endpoint_id)


def _endpoint_page(request, endpoint, *, fragment=None, status=200, **context):
    deliveries = endpoint.deliveries.select_related("event").order_by("-created_at", "-pk")
    page = Paginator(deliveries, DELIVERIES_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "endpoint": endpoint,
        "org_id": request.organization.public_id,
        "form": context.pop("form", None) or EndpointForm.for_endpoint(endpoint),
        "page_obj": page,
        # While something is on its way the log refreshes itself (with JavaScript) to show the outcome.
        "has_pending": any(delivery.status == Status.PENDING for delivery in page),
        "now": timezone.now(),
        **context,
    }
    if request.htmx and fragment:
        return render(request, f"{ENDPOINT_PAGE}#{fragment}", context)
    return render(request, ENDPOINT_PAGE, context, status=status)


@require_GET
@org_manager_required
def endpoint(request, endpoint_id):
    fragment = "deliveries" if request.GET.get("fragment") == "deliveries" else None
    return _endpoint_page(request, _endpoint_or_404(request, endpoint_id), fragment=fragment)


def _done(request, endpoint, notice, fragment, **context):
    if not request.htmx:
        messages.success(request, notice)
        return redirect("notifications_endpoint", request.organization.public_id, endpoint.pk)
    return _endpoint_page(request, endpoint, fragment=fragment, **{f"{fragment}_notice": notice}, **context)


@require_POST
@org_manager_required
def update_endpoint(request, endpoint_id):
    endpoint = _endpoint_or_404(request, endpoint_id)
    form = EndpointForm(request.POST)
    if not form.is_valid():
        return _endpoint_page(request, endpoint, fragment="settings", status=400, form=form)
    endpoint = actions.update_endpoint(
        organization=request.organization,
        actor=request.user,
        endpoint_id=endpoint.pk,
        url=form.cleaned_data["url"],
        description=form.cleaned_data["description"],
        event_types=form.chosen_event_types,
        ip_address=client_ip(request),
    )
    return _done(request, endpoint, "Saved the endpoint.", "settings")


@require_POST
@org_manager_required
def roll_secret(request, endpoint_id):
    endpoint, secret = actions.roll_secret(
        organization=request.organization,
        actor=request.user,
        endpoint_id=_endpoint_or_404(request, endpoint_id).pk,
        ip_address=client_ip(request),
    )
    return _endpoint_page(request, endpoint, fragment="settings", secret=secret)


@require_POST
@org_manager_required
def set_enabled(request, endpoint_id, enabled):
    endpoint = actions.set_enabled(
        organization=request.organization,
        actor=request.user,
        endpoint_id=_endpoint_or_404(request, endpoint_id).pk,
        enabled=enabled,
    )
    notice = "Enabled the endpoint: new events go to it again." if enabled else "Disabled the endpoint."
    return _done(request, endpoint, notice, "settings")


@require_http_methods(["GET", "POST"])
@org_manager_required
def delete_endpoint(request, endpoint_id):
    """GET asks first (hx-confirm asked only with JavaScript on); POST deletes."""
    endpoint = _endpoint_or_404(request, endpoint_id)
    if request.method == "GET":
        return ask_to_confirm(
            request,
            Confirmation(
                title="Delete this endpoint?",
                consequence=f"{shorten(endpoint.url)} gets no more events, and its delivery log is deleted with it.",
                button="Delete endpoint",
                action_url=request.path,
                cancel_url=reverse("notifications_endpoint", args=[request.organization.public_id, endpoint.pk]),
                hx_target="#main",
            ),
        )
    actions.delete_endpoint(
        organization=request.organization, actor=request.user, endpoint_id=endpoint.pk, ip_address=client_ip(request)
    )
    messages.success(request, f"Deleted the endpoint {shorten(endpoint.url)}.")
    # A deleted endpoint has no page to stay on, with htmx or without.
    if request.htmx:
        return HttpResponseClientRedirect(reverse("notifications", args=[request.organization.public_id]))
    return redirect("notifications", request.organization.public_id)


@require_POST
@org_manager_required
def send_test(request, endpoint_id):
    endpoint = _endpoint_or_404(request, endpoint_id)
    actions.send_test_event(organization=request.organization, actor=request.user, endpoint_id=endpoint.pk)
    return _done(request, endpoint, "Sent a test event; its delivery is below.", "deliveries")


@require_POST
@org_manager_required
def send_again(request, endpoint_id, delivery_id):
    endpoint = _endpoint_or_404(request, endpoint_id)
    if not endpoint.deliveries.filter(pk=delivery_id).exists():
        raise Http404("No such delivery.")
    try:
        delivery = actions.send_again(organization=request.organization, actor=request.user, delivery_id=delivery_id)
    except actions.Busy as busy:
        notice = str(busy)
    else:
        notice = f"Sending {delivery.event.type} ({delivery.event.public_id}) again."
    return _done(request, endpoint, notice, "deliveries")
