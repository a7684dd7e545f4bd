from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from licenses import errors
from organizations.audit import client_ip
from organizations.confirm import Confirmation, ask_to_confirm

from . import actions
from .forms import KEY_PLACEHOLDER, ApiKeyForm, CommandForm
from .models import ApiKey

KEYS_PER_PAGE = 25


def _render_api_keys(request, *, form=None, created=None, raw_key=None, notice=""):
    keys = ApiKey.objects.filter(user=request.user).select_related("organization").order_by("-created_at", "-pk")
    page = Paginator(keys, KEYS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "form": form or ApiKeyForm(user=request.user),
        "page_obj": page,
        "created": created,
        "raw_key": raw_key,
        "notice": notice,
    }
    template = "sessions_app/api_keys.html#panel" if request.htmx else "sessions_app/api_keys.html"
    return render(request, template, context)


@login_required
@require_GET
def api_keys(request):
    return _render_api_keys(request)


@login_required
@require_POST
def api_key_create(request):
    form = ApiKeyForm(request.POST, user=request.user)
    if not form.is_valid():
        return _render_api_keys(request, form=form)
    try:
        api_key, raw_key = actions.create_api_key(
            user=request.user,
            name=form.cleaned_data["name"],
            organization=form.cleaned_data["organization"],
            expires_at=form.expires_at,
            actor=request.user,
            ip_address=client_ip(request),
        )
    except errors.LicenseRefusal as refusal:
        form.add_error(None, refusal.message)
        return _render_api_keys(request, form=form)
    # Rendered, not redirected: the key exists only in this response.
    return _render_api_keys(request, created=api_key, raw_key=raw_key)


@login_required
@require_http_methods(["GET", "POST"])
def api_key_revoke(request, key_id):
    """GET asks first; POST revokes."""
    api_key = get_object_or_404(ApiKey.objects.select_related("organization", "user"), pk=key_id, user=request.user)
    if request.method == "GET":
        return ask_to_confirm(
            request,
            Confirmation(
                title="Revoke this key?",
                consequence=(
                    f"The key {api_key.name} ({api_key.prefix}…) stops working at once: engines using it can no "
                    "longer activate or renew a license. A revoked key cannot be restored."
                ),
                button="Revoke key",
                action_url=request.path,
                cancel_url=reverse("api_keys"),
                hx_target="#api-keys-panel",
            ),
        )
    actions.revoke_api_key(api_key=api_key, actor=request.user, ip_address=client_ip(request))
    notice = f"Revoked the key {api_key.name} ({api_key.prefix}…). It no longer works."
    if request.htmx:
        return _render_api_keys(request, notice=notice)
    messages.success(request, notice)
    return redirect("api_keys")


def _command_form(request, data):
    # The nav links here with ?org=…; only a submitted form (it always sends a browser) is bound,
    # so a first visit shows the defaults instead of "required" errors.
    form = CommandForm(data if "browser" in data else None, user=request.user)
    if not form.is_bound:
        form.initial["org"] = _organization_named(form, data.get("org")) or form.fields["org"].queryset.first()
    return form


def _organization_named(form, public_id):
    """One of the form's organizations, or None; the field's own lookup turns a value the database
    refuses (a NUL) into "no such"."""
    try:
        return form.fields["org"].to_python(public_id)
    except ValidationError:
        return None


def _current_values(form):
    """The choices as submitted (valid or not), carried by the create-a-key form so that without
    JavaScript the page comes back as the person left it."""
    values = {name: form[name].value() for name in ("project_path", "test_suite_path", "browser", "retry", "wait")}
    # Only an organization of the person's own is carried, never whatever id was sent.
    if form.is_bound:
        form.is_valid()  # cleaned_data then holds each field that is valid on its own
        organization = form.cleaned_data.get("org")
    else:
        organization = form.initial.get("org")
    values["org"] = organization.public_id if organization else ""
    for flag in ("release_previous", "ephemeral"):
        if form[flag].value():
            values[flag] = "on"
    return {name: "" if value is None else value for name, value in values.items()}


def _render_command(request, form, *, created=None, raw_key=None):
    server_url = request.build_absolute_uri("/").rstrip("/")
    commands = form.commands(server_url=server_url, raw_key=raw_key)
    current = _current_values(form)
    context = {
        "form": form,
        "has_organizations": form.fields["org"].queryset.exists(),
        "commands": commands,
        "command": commands and commands["plain"],
        "created": created,
        "raw_key": raw_key,
        "current": current,
        "current_query": urlencode(current),
        "server_url": server_url,
        "key_placeholder": KEY_PLACEHOLDER,
    }
    template = "sessions_app/command_generator.html"
    if request.htmx:
        template += "#new_key"
    return render(request, template, context)


@login_required
@require_GET
def command_generator(request):
    return _render_command(request, _command_form(request, request.GET))


def _distinct_key_name(user, organization):
    """Each key the generator makes gets a name of its own, so the API keys page tells them apart."""
    # Organization names may be twice as long as a key's name; the date keeps the key recognisable.
    base = f"katalonc for {organization.name[:60]} ({timezone.now():%Y-%m-%d %H:%M})"
    taken = set(user.api_keys.filter(name__startswith=base).values_list("name", flat=True))
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base} #{number}"
    return name


@login_required
@require_POST
def command_generator_key(request):
    """A fresh key restricted to the chosen organization, put into the commands and shown once."""
    form = _command_form(request, request.POST)
    # Only the organization matters for the key; the other fields may still be mid-edit.
    organization = _organization_named(form, request.POST.get("org"))
    if organization is None:
        return _render_command(request, form)
    api_key, raw_key = actions.create_api_key(
        user=request.user,
        name=_distinct_key_name(request.user, organization),
        organization=organization,
        actor=request.user,
        ip_address=client_ip(request),
    )
    return _render_command(request, form, created=api_key, raw_key=raw_key)
