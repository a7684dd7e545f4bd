from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import PasswordResetView
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRefresh

from licenses.models import LicensePool, Product

from . import actions, errors, throttle
from .audit import client_ip
from .confirm import Confirmation, ask_to_confirm
from .csv_stream import streaming_csv_response
from .forms import (
    InviteForm,
    MembersFilterForm,
    ProfileForm,
    RoleForm,
    SetFirstPasswordResetForm,
    SignUpForm,
    TransferOwnershipForm,
)
from .htmx import render_filtered
from .models import Invitation, Membership, Organization, Role, User
from .permissions import last_organization_id, org_manager_required, org_member_required, org_owner_required

MEMBERS_TEMPLATE = "organizations/members.html"
ACTIVE_PER_PAGE = 50
REMOVED_SHOWN = 50


@login_required
def home(request):
    """The licenses of the organization the person last worked in, else of their first one."""
    organizations = Organization.objects.for_user(request.user).order_by("name")
    last = last_organization_id(request)
    organization = (last and organizations.filter(public_id=last).first()) or organizations.first()
    if organization is None:
        return render(request, "organizations/no_organization.html")
    return redirect("licenses", organization.public_id)


@login_required
def account(request):
    """A person's profile: their name, and the way to their password and API keys."""
    form = ProfileForm(request.POST or None, instance=request.user)
    if request.method == "POST" and form.is_valid():
        form.save()
        name = request.user.name
        messages.success(request, f"You are shown as {name}." if name else "You are shown by your email address.")
        return redirect("account")
    return render(request, "organizations/account.html", {"form": form}, status=400 if form.errors else 200)


@org_member_required
def org_home(request):
    return redirect("licenses", request.organization.public_id)


def _link_builder(request):
    return lambda invitation: request.build_absolute_uri(invitation.get_absolute_url())


def _members_url(request, data=None):
    """The members page; given a row's post (`data`), the same filtered page of the list it was on."""
    url = reverse("members", args=[request.organization.public_id])
    values = MembersFilterForm(data, prefix="list").values() if data is not None else {}
    return f"{url}?{urlencode(values)}" if values else url


def _base_context(request):
    organization = request.organization
    products = set(LicensePool.objects.for_org(organization).values_list("product", flat=True))
    return {
        "organization": organization,
        "can_manage": request.membership.can_manage,
        "is_owner": request.membership.is_owner,
        "has_re_pool": Product.RE in products,
        "has_kse_pool": Product.KSE in products,
    }


def _pending_context(request):
    invitations = list(
        Invitation.objects.pending().filter(organization=request.organization).select_related("invited_by")
    )
    if request.membership.can_manage:
        # Links are bearer tokens: only those who may invite see them.
        link_for = _link_builder(request)
        for invitation in invitations:
            invitation.link = link_for(invitation)
    return {"invitations": invitations}


def _removed_context(request):
    removed = (
        Membership.objects.removed().filter(organization=request.organization).select_related("user", "removed_by")
    )
    return {
        "removed_memberships": list(removed.order_by("-removed_at")[:REMOVED_SHOWN]),
        "removed_shown": REMOVED_SHOWN,
    }


def _active_count(request):
    return Membership.objects.active().filter(organization=request.organization).count()


def _active_list_context(request, filters):
    """The active members list: one query for the page, one to count what matches, and one more
    for the whole count when a filter is on, whatever the organization's size."""
    organization = request.organization
    active = Membership.objects.active().filter(organization=organization).with_activity(organization)
    page = Paginator(filters.filter(active).by_rank(), ACTIVE_PER_PAGE).get_page(filters.values().get("page"))
    return {
        "page": page,
        "filters": filters,
        # What a row's form posts back, so that the person lands on the same list without JavaScript.
        "list_values": {name: value for name, value in filters.values().items() if name != "page"}
        | {"page": page.number},
        "active_count": _active_count(request) if filters.is_filtering else page.paginator.count,
    }


def _members_context(request, filters):
    organization = request.organization
    context = _base_context(request)
    context.update(_pending_context(request))
    context.update(_removed_context(request))
    context.update(_active_list_context(request, filters))
    context.update(
        invite_form=InviteForm(),
        transfer_form=(
            TransferOwnershipForm(organization=organization, user=request.user) if request.membership.is_owner else None
        ),
    )
    return context


def _render_fragments(request, context, *fragments, swap_first=True):
    """Render partials of the members page, one after the other: the first replaces the swap
    target, the rest carry hx-swap-oob. With swap_first=False all are out-of-band and the target
    is replaced by nothing."""
    html = [
        render_to_string(
            f"{MEMBERS_TEMPLATE}#{fragment}", {**context, "oob": index > 0 or not swap_first}, request=request
        )
        for index, fragment in enumerate(fragments)
    ]
    return HttpResponse("".join(html))


@org_member_required
def members(request):
    filters = MembersFilterForm(request.GET)
    if request.htmx and request.htmx.target == "active-list":
        # A search, a filter or another page: only the list changes.
        context = _base_context(request) | _active_list_context(request, filters)
        return render_filtered(request, MEMBERS_TEMPLATE, "active-list", context)
    return render(request, MEMBERS_TEMPLATE, _members_context(request, filters))


@org_manager_required
@require_POST
def invite(request):
    form = InviteForm(request.POST)
    if form.is_valid():
        try:
            invitations = actions.invite_members(
                organization=request.organization,
                actor=request.user,
                emails=form.cleaned_data["emails"],
                role=form.cleaned_data["role"],
                link_for=_link_builder(request),
                ip_address=client_ip(request),
            )
        except errors.MembershipRefusal as refusal:
            for message in refusal.details.get("emails", {}).values() or [refusal.message]:
                form.add_error("emails", message)
        else:
            notice = f"Invitation sent to {', '.join(i.email for i in invitations)}."
            if request.htmx:
                context = {**_base_context(request), **_pending_context(request)}
                context.update(invite_form=InviteForm(), invite_notice=notice)
                return _render_fragments(request, context, "invite", "pending")
            messages.success(request, notice)
            return redirect(_members_url(request))
    if request.htmx:
        return _render_fragments(request, {**_base_context(request), "invite_form": form}, "invite")
    context = _members_context(request, MembersFilterForm(request.GET))
    context["invite_form"] = form
    return render(request, MEMBERS_TEMPLATE, context)


def _flash(request, *, error=None, notice=None):
    if error:
        messages.error(request, error)
    else:
        messages.success(request, notice)


def _active_membership_or_404(request, membership_id):
    return get_object_or_404(Membership.objects.active().filter(organization=request.organization), pk=membership_id)


def _member_row(request, membership_id, **extra):
    organization = request.organization
    row = Membership.objects.filter(organization=organization, pk=membership_id).with_activity(organization).get()
    return _render_fragments(request, {**_base_context(request), "m": row, **extra}, "member-row")


@org_manager_required
@require_POST
def change_role(request, membership_id):
    membership = _active_membership_or_404(request, membership_id)
    form = RoleForm(request.POST)
    error = notice = None
    # Making someone a member revokes the invitations they sent (see actions.change_role).
    revokes_invitations = (
        form.is_valid()
        and form.cleaned_data["role"] == Role.MEMBER
        and Invitation.objects.pending().filter(organization=request.organization, invited_by=membership.user).exists()
    )
    previous_role = membership.role
    if not form.is_valid():
        error = "Choose Admin or Member."
    else:
        try:
            membership = actions.change_role(
                organization=request.organization,
                actor=request.user,
                membership_id=membership.pk,
                role=form.cleaned_data["role"],
                ip_address=client_ip(request),
            )
        except errors.MembershipRefusal as refusal:
            error = refusal.message
        else:
            role_name = Role(membership.role).label.lower()
            if membership.role == previous_role:
                notice = f"Nothing changed: {membership.user.display_name} is already {role_name}."
            else:
                notice = f"{membership.user.display_name} is now {role_name}."
    if request.htmx:
        if not error and (membership.user_id == request.user.pk or revokes_invitations):
            # Your own role changed, or the pending invitations did: more than the row changed. (A
            # row's answer cannot carry the pending list out of band: it is parsed as table content.)
            _flash(request, notice=notice)
            return HttpResponseClientRefresh()
        return _member_row(request, membership.pk, row_error=error, row_notice=notice)
    _flash(request, error=error, notice=notice)
    return redirect(_members_url(request, request.POST))


@org_manager_required
@require_http_methods(["GET", "POST"])
def remove(request, membership_id):
    """GET asks first; POST removes."""
    membership = _active_membership_or_404(request, membership_id)
    if request.method == "GET":
        # The list the person was on (its search, filters and page) goes through the confirmation.
        back = MembersFilterForm(request.GET, prefix="list").values()
        return ask_to_confirm(
            request,
            Confirmation(
                title=f"Remove {membership.user.display_name}?",
                consequence=(
                    f"{membership.user.email} leaves {request.organization.name}: their licenses, sessions and "
                    "machines here end now, and the invitations they sent are revoked."
                ),
                button="Remove member",
                action_url=request.path,
                cancel_url=_members_url(request, request.GET),
                hx_target=f"#member-{membership.pk}",
                hidden=[(f"list-{name}", str(value)) for name, value in back.items()],
            ),
        )
    try:
        actions.remove_member(
            organization=request.organization,
            actor=request.user,
            membership_id=membership.pk,
            ip_address=client_ip(request),
        )
    except errors.MembershipRefusal as refusal:
        if request.htmx:
            return _member_row(request, membership.pk, row_error=refusal.message)
        messages.error(request, refusal.message)
    else:
        notice = f"{membership.user.display_name} was removed; their licenses, sessions and machines here ended."
        if request.htmx:
            context = {**_base_context(request), **_removed_context(request), "active_count": _active_count(request)}
            context.update(_pending_context(request), removed_notice=notice)
            # The row's own swap is empty: the row goes; the removed list, the count and the pending
            # invitations (theirs were revoked with them) follow.
            return _render_fragments(request, context, "removed", "active-count", "pending", swap_first=False)
        messages.success(request, notice)
    return redirect(_members_url(request, request.POST))


@org_owner_required
@require_POST
def transfer_ownership(request):
    form = TransferOwnershipForm(request.POST, organization=request.organization, user=request.user)
    if form.is_valid():
        successor = form.cleaned_data["membership"]
        try:
            actions.transfer_ownership(
                organization=request.organization,
                actor=request.user,
                membership_id=successor.pk,
                ip_address=client_ip(request),
            )
        except errors.MembershipRefusal as refusal:
            form.add_error("email", refusal.message)
        else:
            messages.success(request, f"{successor.user.display_name} is now the owner; you are an admin.")
            return redirect(_members_url(request))
    context = _members_context(request, MembersFilterForm(request.GET))
    context["transfer_form"] = form
    return render(request, MEMBERS_TEMPLATE, context)


def _invitation_or_404(request, invitation_id):
    return get_object_or_404(Invitation.objects.filter(organization=request.organization), pk=invitation_id)


def _after_invitation_change(request, *, notice=None, error=None):
    if request.htmx:
        context = {**_base_context(request), **_pending_context(request)}
        context.update(pending_notice=notice, pending_error=error)
        return _render_fragments(request, context, "pending")
    _flash(request, error=error, notice=notice)
    return redirect(_members_url(request))


@org_manager_required
@require_POST
def resend_invitation(request, invitation_id):
    invitation = _invitation_or_404(request, invitation_id)
    try:
        actions.resend_invitation(
            organization=request.organization,
            actor=request.user,
            invitation_id=invitation.pk,
            link_for=_link_builder(request),
            ip_address=client_ip(request),
        )
    except errors.MembershipRefusal as refusal:
        return _after_invitation_change(request, error=refusal.message)
    return _after_invitation_change(request, notice=f"Invitation to {invitation.email} sent again.")


@org_manager_required
@require_POST
def revoke_invitation(request, invitation_id):
    invitation = _invitation_or_404(request, invitation_id)
    try:
        actions.revoke_invitation(
            organization=request.organization,
            actor=request.user,
            invitation_id=invitation.pk,
            ip_address=client_ip(request),
        )
    except errors.MembershipRefusal as refusal:
        return _after_invitation_change(request, error=refusal.message)
    return _after_invitation_change(request, notice=f"Invitation to {invitation.email} revoked.")


CSV_COLUMNS = ["name", "email", "role", "status", "joined_at", "removed_at", "removed_by", "kse_license", "last_seen"]


def _iso(moment):
    return moment.isoformat() if moment else ""


@org_manager_required
def export_members(request):
    organization = request.organization
    memberships = (
        Membership.objects.filter(organization=organization)
        .with_activity(organization)
        .order_by("removed_at", "joined_at", "pk")
    )
    rows = (
        [
            m.user.name,
            m.user.email,
            m.role,
            "active" if m.is_active else "removed",
            _iso(m.joined_at),
            _iso(m.removed_at),
            m.removed_by.email if m.removed_by else "",
            "yes" if m.has_kse_seat else "no",
            _iso(m.last_seen),
        ]
        for m in memberships.iterator(chunk_size=500)
    )
    return streaming_csv_response(header=CSV_COLUMNS, rows=rows, filename=f"members-{organization.public_id}.csv")


def _usable_invitation_or_refusal(request, token):
    """(invitation, None) for a link that can still be accepted, else (None, the page saying why)."""
    invitation = Invitation.objects.select_related("organization", "invited_by").filter(token=token).first()
    if invitation is None:
        message = "This invitation link is not valid. Check that you copied all of it, or ask for a new invitation."
        return None, render(request, "organizations/invitation_unusable.html", {"message": message}, status=404)
    try:
        actions.check_invitation_usable(invitation)
    except errors.InvitationUnusable as refusal:
        context = {"message": refusal.message, "invitation": invitation}
        return None, render(request, "organizations/invitation_unusable.html", context, status=410)
    return invitation, None


def accept_invitation(request, token):
    """Three cases, and the page says which applies: signed in as the invited account (accept with
    one click); an address with an account (sign in as it first, or have a link to set its password
    mailed to the address); an address with no account (create one here)."""
    invitation, refusal_page = _usable_invitation_or_refusal(request, token)
    if refusal_page is not None:
        return refusal_page

    signed_in = request.user.is_authenticated
    wrong_account = signed_in and request.user.email.lower() != invitation.email.lower()
    # Any account at all, whatever its password: the link never signs anyone in as it.
    has_account = not signed_in and User.objects.filter(email__iexact=invitation.email).exists()
    form = SignUpForm(email=invitation.email) if not signed_in and not has_account else None
    error = None
    if request.method == "POST" and not wrong_account and not has_account:
        if not signed_in:
            form = SignUpForm(request.POST, email=invitation.email)
        if signed_in or form.is_valid():
            try:
                _membership, user = actions.accept_invitation(
                    token=token,
                    user=request.user if signed_in else None,
                    name="" if signed_in else form.cleaned_data["name"],
                    password=None if signed_in else form.cleaned_data["password"],
                    ip_address=client_ip(request),
                )
            except errors.AccountExists as refusal:
                # Made by someone else since the page was shown: the existing-account case now.
                error, has_account, form = refusal.message, True, None
            except errors.MembershipRefusal as refusal:
                error = refusal.message
            else:
                if not signed_in:
                    # Only ever the account this request just created.
                    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                messages.success(request, f"Welcome to {invitation.organization.name}.")
                return redirect("org_home", invitation.organization.public_id)
    return _accept_page(
        request, invitation, form=form, wrong_account=wrong_account, has_account=has_account, error=error
    )


def _accept_page(request, invitation, *, form=None, wrong_account=False, has_account=False, error=None, notice=None):
    context = {
        "invitation": invitation,
        "form": form,
        "wrong_account": wrong_account,
        "has_account": has_account,
        "error": error,
        "notice": notice,
        "login_url": f"{reverse('login')}?{urlencode({'next': invitation.get_absolute_url()})}",
    }
    return render(request, "organizations/accept_invitation.html", context)


@require_POST
def invitation_password_link(request, token):
    """Mail a link to set the invited account's password to the invited address itself: the way in
    for an account that never had a password (an owner made by create_organization, say). Whoever
    holds the mailbox sets it, signs in and accepts; nobody else learns anything new."""
    invitation, refusal_page = _usable_invitation_or_refusal(request, token)
    if refusal_page is not None:
        return refusal_page
    if request.user.is_authenticated:
        return redirect(invitation.get_absolute_url())
    wait = throttle.password_reset_wait(client_ip(request), invitation.email)
    if wait:
        return _accept_page(request, invitation, has_account=True, error=throttle.password_reset_refusal(wait))
    reset = SetFirstPasswordResetForm({"email": invitation.email})
    if reset.is_valid():
        reset.save(
            request=request,
            use_https=request.is_secure(),
            email_template_name="registration/password_reset_email.html",
            extra_email_context={
                "invitation_url": request.build_absolute_uri(invitation.get_absolute_url()),
                "organization_name": invitation.organization.name,
            },
        )
    notice = (
        f"If {invitation.email} has an active account, a link to set its password is on its way to that address. "
        "Follow it, sign in, and open this invitation again to accept."
    )
    return _accept_page(request, invitation, has_account=True, notice=notice)


class ThrottledPasswordResetView(PasswordResetView):
    """Django's password reset, limited per client address and per email (organizations.throttle). Past
    a limit the form says so (429) and no mail is sent, whether or not the email has an account."""

    form_class = SetFirstPasswordResetForm

    def form_valid(self, form):
        wait = throttle.password_reset_wait(client_ip(self.request), form.cleaned_data["email"])
        if not wait:
            return super().form_valid(form)
        form.add_error(None, throttle.password_reset_refusal(wait))
        response = self.form_invalid(form)
        response.status_code = 429
        response["Retry-After"] = str(wait)
        return response
