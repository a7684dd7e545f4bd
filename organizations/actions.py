"""Writes to organizations and memberships. Each action is one transaction that locks the
organization row first, so concurrent changes to one organization queue instead of racing,
and writes its audit event inside that transaction."""

from collections.abc import Callable, Iterable

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models.functions import Lower, Now
from django.utils import timezone

from . import errors, signals
from .audit import Action, record, record_each
from .emails import send_invitation_email
from .models import INVITATION_LIFETIME, MANAGER_ROLES, Invitation, Membership, Organization, Role

INVITABLE_ROLES = (Role.ADMIN, Role.MEMBER)

# Builds the absolute link of an invitation; the interface knows the site's address, actions do not.
LinkBuilder = Callable[[Invitation], str]


@transaction.atomic
def create_organization(*, name, owner, actor=None, ip_address=None):
    """A new organization with `owner` as its owner."""
    organization = Organization.objects.create(name=name)
    Membership.objects.create(organization=organization, user=owner, role=Role.OWNER)
    record(
        organization=organization,
        actor=actor or owner,
        action=Action.ORGANIZATION_CREATED,
        target=organization,
        after={"name": name, "owner": owner.email},
        ip_address=ip_address,
    )
    return organization


def get_or_create_user(email):
    """The account for `email`, created without a usable password when missing. Returns (user, created)."""
    User = get_user_model()
    user = User.objects.filter(email__iexact=email).first()
    if user is not None:
        return user, False
    return User.objects.create_user(email=email, password=None), True


def _lock_organization(organization: Organization) -> Organization:
    return Organization.objects.select_for_update().get(pk=organization.pk)


def _actor_membership(organization: Organization, actor) -> Membership:
    """The actor's membership, read after the organization is locked, so a role taken away a moment
    ago is already seen."""
    membership = Membership.objects.active().filter(organization=organization, user=actor).first()
    if membership is None:
        raise errors.NotAllowed("You are not a member of this organization.")
    return membership


def _require_manager(organization: Organization, actor) -> None:
    # A superuser is the installation's operator (the admin site), whom no organization role
    # constrains, as in the license actions.
    if actor.is_superuser:
        return
    if _actor_membership(organization, actor).role not in MANAGER_ROLES:
        raise errors.NotAllowed("Only owners and admins manage members.")


def _locked_active_membership(organization: Organization, membership_id: int) -> Membership:
    # of=("self",): the membership row only. Locking the joined user row too would deadlock
    # remove_member with an activation: removal then waits for the person's pools, while the
    # activation holding one needs a key-share lock on the same user row to commit its session.
    membership = (
        Membership.objects.select_for_update(of=("self",))
        .select_related("user")
        .filter(organization=organization, pk=membership_id)
        .first()
    )
    if membership is None or not membership.is_active:
        raise errors.NotActiveMember("This person is no longer a member.")
    return membership


def _locked_pending_invitation(organization: Organization, invitation_id: int) -> Invitation:
    invitation = Invitation.objects.select_for_update().filter(organization=organization, pk=invitation_id).first()
    if invitation is None or invitation.accepted_at or invitation.revoked_at:
        raise errors.NotPending("This invitation was already accepted or revoked.")
    return invitation


@transaction.atomic
def invite_members(
    *,
    organization: Organization,
    actor,
    emails: Iterable[str],
    role: str,
    link_for: LinkBuilder,
    ip_address: str | None = None,
) -> list[Invitation]:
    """Invite every email with `role`, or none of them: each email that is already a member or
    already invited is reported in InvalidInvitations.details["emails"]."""
    # Lock the organization, since we must not race another invitation or an acceptance of the
    # same email between the checks below and the inserts.
    organization = _lock_organization(organization)
    _require_manager(organization, actor)
    if role not in INVITABLE_ROLES:
        raise errors.NotAllowed("Invitations make admins or members; ownership is only transferred.")
    wanted = list(dict.fromkeys(email.strip().lower() for email in emails if email.strip()))
    if not wanted:
        raise errors.InvalidInvitations("Enter at least one email address.")

    members = set(
        Membership.objects.active()
        .filter(organization=organization)
        .annotate(email_lower=Lower("user__email"))
        .filter(email_lower__in=wanted)
        .values_list("email_lower", flat=True)
    )
    invited = set(
        Invitation.objects.pending()
        .filter(organization=organization)
        .annotate(email_lower=Lower("email"))
        .filter(email_lower__in=wanted)
        .values_list("email_lower", flat=True)
    )
    problems = {}
    for email in wanted:
        if email in members:
            problems[email] = f"{email} is already a member."
        elif email in invited:
            problems[email] = f"{email} is already invited; resend that invitation instead."
    if problems:
        raise errors.InvalidInvitations(
            "No invitation was sent: " + " ".join(problems.values()), details={"emails": problems}
        )

    now = timezone.now()
    invitations = [
        Invitation.objects.create(
            organization=organization,
            email=email,
            role=role,
            invited_by=actor,
            created_at=now,
            sent_at=now,
            expires_at=now + INVITATION_LIFETIME,
        )
        for email in wanted
    ]
    record_each(
        invitations,
        organization=organization,
        actor=actor,
        action=Action.MEMBER_INVITED,
        describe=lambda invitation: {
            "target_label": invitation.email,
            "after": {"email": invitation.email, "role": role},
        },
        ip_address=ip_address,
    )
    for invitation in invitations:
        _send_after_commit(invitation, link_for)
    return invitations


def _send_after_commit(invitation: Invitation, link_for: LinkBuilder):
    # Mail leaves only once the invitation exists for good: a rolled-back invite sends nothing.
    link = link_for(invitation)
    transaction.on_commit(lambda: send_invitation_email(invitation, link))


@transaction.atomic
def resend_invitation(
    *, organization: Organization, actor, invitation_id: int, link_for: LinkBuilder, ip_address: str | None = None
) -> Invitation:
    """Send the invitation again with a fresh expiry; the link stays the same."""
    organization = _lock_organization(organization)
    _require_manager(organization, actor)
    invitation = _locked_pending_invitation(organization, invitation_id)
    before = {"expires_at": invitation.expires_at.isoformat()}
    now = timezone.now()
    invitation.sent_at = now
    invitation.expires_at = now + INVITATION_LIFETIME
    invitation.save(update_fields=["sent_at", "expires_at"])
    record(
        organization=organization,
        actor=actor,
        action=Action.INVITATION_RESENT,
        target=invitation,
        target_label=invitation.email,
        before=before,
        after={"expires_at": invitation.expires_at.isoformat()},
        ip_address=ip_address,
    )
    _send_after_commit(invitation, link_for)
    return invitation


@transaction.atomic
def revoke_invitation(
    *, organization: Organization, actor, invitation_id: int, ip_address: str | None = None
) -> Invitation:
    """The link stops working at once."""
    organization = _lock_organization(organization)
    _require_manager(organization, actor)
    invitation = _locked_pending_invitation(organization, invitation_id)
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    record(
        organization=organization,
        actor=actor,
        action=Action.INVITATION_REVOKED,
        target=invitation,
        target_label=invitation.email,
        ip_address=ip_address,
    )
    return invitation


def check_invitation_usable(invitation: Invitation, now=None):
    """Raise InvitationUnusable with the reason a person can act on, or return quietly. Acceptance
    passes the database's clock as `now`; the page's early look may use the app's."""
    if invitation.revoked_at:
        raise errors.InvitationUnusable(
            "This invitation was revoked. Ask the organization's owner or an admin for a new one.",
            code="invitation_revoked",
        )
    if invitation.accepted_at:
        raise errors.InvitationUnusable(
            "This invitation was already used. Sign in to reach the organization.", code="invitation_used"
        )
    if invitation.expires_at <= (now or timezone.now()):
        raise errors.InvitationUnusable(
            "This invitation has expired. Ask the organization's owner or an admin to resend it.",
            code="invitation_expired",
        )


@transaction.atomic
def accept_invitation(
    *,
    token: str,
    user=None,
    name: str = "",
    password: str | None = None,
    ip_address: str | None = None,
):
    """Join the organization through an invitation link, as one of two people only: a signed-in
    `user` whose account owns the invited email, or, when nobody is signed in and the email has no
    account at all, a new account made here with `name` and `password`.

    The link is a bearer token an inviter can copy, so it never sets or changes the password of an
    existing account, whatever state that password is in (never set, an operator's, a superuser's),
    and never signs anyone in as it: whoever owns that account signs in first (or sets a password
    through the reset mail sent to the address itself) and accepts then. Returns (membership, user).
    The token works once."""
    invitation = Invitation.objects.select_related("organization").get(token=token)
    organization = _lock_organization(invitation.organization)
    invitation = Invitation.objects.select_for_update().annotate(db_now=Now()).get(pk=invitation.pk)
    check_invitation_usable(invitation, now=invitation.db_now)

    if user is not None and user.is_authenticated:
        if user.email.lower() != invitation.email.lower():
            raise errors.InvitationForAnotherAccount(
                f"This invitation is for {invitation.email}, but you are signed in as {user.email}. "
                "Sign out first, then open the link again."
            )
    else:
        user = _create_invited_account(invitation.email, name=name, password=password)

    membership = Membership.objects.active().filter(organization=organization, user=user).first()
    if membership is None:
        membership = Membership.objects.create(organization=organization, user=user, role=invitation.role)
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    record(
        organization=organization,
        actor=user,
        action=Action.INVITATION_ACCEPTED,
        target=membership,
        target_label=user.email,
        after={"role": membership.role},
        ip_address=ip_address,
    )
    return membership, user


def _create_invited_account(email: str, *, name: str, password: str | None):
    """A new account for an email that has none; AccountExists for one that has, in any state."""
    account_exists = errors.AccountExists(
        f"{email} already has an account. Sign in as {email} to accept the invitation; if that account "
        "never had a password, or you forgot it, ask for a link to set one: it is mailed to that address."
    )
    User = get_user_model()
    if User.objects.filter(email__iexact=email).exists():
        raise account_exists
    if not password:
        raise errors.NotAllowed("Choose a password for your new account.")
    try:
        # A savepoint: another organization's invitation for the same email may be creating the
        # account right now (its lock is on that organization, not this one); the unique email
        # decides, and the loser is told the account exists.
        with transaction.atomic():
            return User.objects.create_user(email=email, password=password, name=name)
    except IntegrityError:
        raise account_exists from None


@transaction.atomic
def change_role(
    *, organization: Organization, actor, membership_id: int, role: str, ip_address: str | None = None
) -> Membership:
    """Make a member an admin or an admin a member. The owner's role changes only by a transfer."""
    organization = _lock_organization(organization)
    _require_manager(organization, actor)
    if role not in INVITABLE_ROLES:
        raise errors.NotAllowed("Only a transfer of ownership makes someone the owner.")
    membership = _locked_active_membership(organization, membership_id)
    if membership.role == Role.OWNER:
        raise errors.NotAllowed("The owner's role changes only when the owner transfers ownership.")
    if membership.role == role:
        return membership
    before = {"role": membership.role}
    membership.role = role
    membership.save(update_fields=["role"])
    record(
        organization=organization,
        actor=actor,
        action=Action.MEMBER_ROLE_CHANGED,
        target=membership,
        target_label=membership.user.email,
        before=before,
        after={"role": role},
        ip_address=ip_address,
    )
    if role not in MANAGER_ROLES:
        _revoke_invitations_sent_by(
            organization, membership.user, actor=actor, reason="inviter_demoted", ip_address=ip_address
        )
    return membership


def _revoke_invitations_sent_by(organization: Organization, inviter, *, actor, reason: str, ip_address: str | None):
    """Revoke the invitations `inviter` sent here that nobody accepted yet, each audited. An
    invitation carries its sender's authority: once that is gone (removed, or made a member), a link
    they kept, perhaps to a second address of their own, must not bring anyone in as admin. Called
    with the organization locked, so no acceptance runs meanwhile."""
    invitations = list(Invitation.objects.pending().filter(organization=organization, invited_by=inviter))
    if not invitations:
        return
    now = timezone.now()
    Invitation.objects.filter(pk__in=[invitation.pk for invitation in invitations]).update(revoked_at=now)
    record_each(
        invitations,
        organization=organization,
        actor=actor,
        action=Action.INVITATION_REVOKED,
        describe=lambda invitation: {
            "target_label": invitation.email,
            "after": {"reason": reason, "invited_by": inviter.email, "role": invitation.role},
        },
        ip_address=ip_address,
    )


@transaction.atomic
def transfer_ownership(
    *, organization: Organization, actor, membership_id: int, ip_address: str | None = None
) -> Membership:
    """Hand ownership to another active member; the old owner becomes an admin."""
    organization = _lock_organization(organization)
    current = _actor_membership(organization, actor)
    if current.role != Role.OWNER:
        raise errors.NotAllowed("Only the owner can transfer ownership.")
    successor = _locked_active_membership(organization, membership_id)
    if successor.pk == current.pk:
        raise errors.NotAllowed("You are already the owner.")
    # Demote first: one_owner_per_organization allows a single owner at every moment.
    current.role = Role.ADMIN
    current.save(update_fields=["role"])
    before = {"owner": actor.email, "role": successor.role}
    successor.role = Role.OWNER
    successor.save(update_fields=["role"])
    record(
        organization=organization,
        actor=actor,
        action=Action.OWNERSHIP_TRANSFERRED,
        target=successor,
        target_label=successor.user.email,
        before=before,
        after={"owner": successor.user.email, "previous_owner_role": Role.ADMIN},
        ip_address=ip_address,
    )
    return successor


@transaction.atomic
def remove_member(
    *, organization: Organization, actor, membership_id: int, ip_address: str | None = None
) -> Membership:
    """Remove a member and everything they hold in this organization: KSE seats are revoked, their
    sessions end, their machines are deactivated and their keys for this organization revoked (by
    the receivers of signals.member_removed), and the invitations they sent are revoked. The only
    way a membership ends: the members page and the admin's Remove action both call this."""
    organization = _lock_organization(organization)
    _require_manager(organization, actor)
    membership = _locked_active_membership(organization, membership_id)
    if membership.role == Role.OWNER:
        raise errors.NotAllowed("Nobody removes the owner. The owner can transfer ownership first.")
    if membership.user_id == actor.pk:
        raise errors.NotAllowed("You cannot remove yourself; ask the owner or another admin.")
    user = membership.user
    now = timezone.now()

    # Licenses and sessions_app end the seats, sessions, machines and keys, in this transaction and
    # under the pools' locks (see signals.member_removed), and say how many for the audit event.
    consequences = {}
    for _receiver, counts in signals.member_removed.send(
        sender=Membership, organization=organization, user=user, actor=actor, now=now
    ):
        consequences.update(counts)

    membership.removed_at = now
    membership.removed_by = actor
    membership.save(update_fields=["removed_at", "removed_by"])
    _revoke_invitations_sent_by(organization, user, actor=actor, reason="inviter_removed", ip_address=ip_address)
    record(
        organization=organization,
        actor=actor,
        action=Action.MEMBER_REMOVED,
        target=membership,
        target_label=user.email,
        before={"role": membership.role},
        after=consequences,
        ip_address=ip_address,
    )
    return membership
