from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from licenses.models import LicensedUser
from organizations import actions, errors
from organizations.audit import Action
from organizations.models import AuditEvent, Invitation, Membership, Role
from sessions_app.models import ApiKey, EngineSession, Machine
from tests import factories
from tests.organizations.conftest import link_for, membership_of

pytestmark = pytest.mark.django_db


def invite(organization, actor, emails, role="member"):
    return actions.invite_members(
        organization=organization, actor=actor, emails=emails, role=role, link_for=link_for, ip_address="10.0.0.1"
    )


class TestInvite:
    def test_several_people_are_invited_at_once_and_mailed(
        self, organization, owner, django_capture_on_commit_callbacks
    ):
        """Each invited email gets a pending invitation, an audit event and a mail with its link."""
        with django_capture_on_commit_callbacks(execute=True):
            invitations = invite(organization, owner, ["a@example.com", "B@Example.com"])
        assert [i.email for i in invitations] == ["a@example.com", "b@example.com"]
        assert Invitation.objects.pending().filter(organization=organization).count() == 2
        assert AuditEvent.objects.filter(action=Action.MEMBER_INVITED, ip_address="10.0.0.1").count() == 2
        assert sorted(m.to[0] for m in mail.outbox) == ["a@example.com", "b@example.com"]
        assert invitations[0].get_absolute_url() in mail.outbox[0].body + mail.outbox[1].body

    def test_one_bad_email_invites_nobody(self, organization, owner, member_user):
        """An email that is already a member refuses the whole batch, naming that email."""
        with pytest.raises(errors.InvalidInvitations) as refusal:
            invite(organization, owner, ["fresh@example.com", member_user.email.upper()])
        assert refusal.value.details["emails"] == {member_user.email: f"{member_user.email} is already a member."}
        assert not Invitation.objects.filter(organization=organization).exists()
        assert not AuditEvent.objects.filter(action=Action.MEMBER_INVITED).exists()

    def test_an_email_already_invited_is_refused(self, organization, owner, invitation):
        """A second invitation to a pending email is refused; resend is the way."""
        with pytest.raises(errors.InvalidInvitations, match="already invited"):
            invite(organization, owner, [invitation.email])

    def test_invitations_never_make_an_owner(self, organization, owner):
        """Inviting as owner is refused."""
        with pytest.raises(errors.NotAllowed):
            invite(organization, owner, ["x@example.com"], role=Role.OWNER)

    def test_a_member_cannot_invite(self, organization, member_user):
        """Members only look."""
        with pytest.raises(errors.NotAllowed):
            invite(organization, member_user, ["x@example.com"])

    def test_an_admin_can_invite_admins(self, organization, admin_user):
        """Admins manage members like the owner."""
        [invitation] = invite(organization, admin_user, ["x@example.com"], role=Role.ADMIN)
        assert invitation.role == Role.ADMIN

    def test_the_database_refuses_two_pending_invitations_for_one_email(self, organization, invitation):
        """one_pending_invitation_per_email holds even past the action, case-insensitively."""
        with pytest.raises(IntegrityError), transaction.atomic():
            Invitation.objects.create(organization=organization, email=invitation.email.upper())


class TestResendAndRevoke:
    def test_resend_gives_a_new_expiry_and_mails_again(
        self, organization, owner, invitation, django_capture_on_commit_callbacks
    ):
        """A resent invitation runs for a full lifetime from now, with the same link."""
        Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timezone.timedelta(days=1))
        with django_capture_on_commit_callbacks(execute=True):
            actions.resend_invitation(
                organization=organization, actor=owner, invitation_id=invitation.pk, link_for=link_for
            )
        invitation.refresh_from_db()
        assert not invitation.is_expired
        assert len(mail.outbox) == 1
        assert invitation.token in mail.outbox[0].body
        assert AuditEvent.objects.filter(action=Action.INVITATION_RESENT).count() == 1

    def test_a_revoked_invitation_cannot_be_revoked_or_resent(self, organization, owner, invitation):
        """Once revoked, the invitation is no longer pending."""
        actions.revoke_invitation(organization=organization, actor=owner, invitation_id=invitation.pk)
        with pytest.raises(errors.NotPending):
            actions.revoke_invitation(organization=organization, actor=owner, invitation_id=invitation.pk)
        with pytest.raises(errors.NotPending):
            actions.resend_invitation(
                organization=organization, actor=owner, invitation_id=invitation.pk, link_for=link_for
            )
        assert AuditEvent.objects.filter(action=Action.INVITATION_REVOKED).count() == 1


class TestAccept:
    def test_a_new_person_signs_up_and_joins_with_the_invited_role(self, organization, owner):
        """The account is made with the name and password given; the membership has the invitation's role."""
        [invitation] = invite(organization, owner, ["dana@example.com"], role=Role.ADMIN)
        membership, user = actions.accept_invitation(
            token=invitation.token, name="Dana", password="a-long-enough-password"
        )
        assert user.check_password("a-long-enough-password")
        assert user.name == "Dana"
        assert membership.role == Role.ADMIN and membership.organization == organization
        invitation.refresh_from_db()
        assert invitation.accepted_by == user
        assert AuditEvent.objects.filter(action=Action.INVITATION_ACCEPTED, actor=user).count() == 1

    def test_the_token_works_once(self, organization, invitation):
        """A used invitation is refused."""
        actions.accept_invitation(token=invitation.token, name="N", password="a-long-enough-password")
        with pytest.raises(errors.InvitationUnusable) as refusal:
            actions.accept_invitation(token=invitation.token, name="N", password="a-long-enough-password")
        assert refusal.value.code == "invitation_used"

    def test_an_expired_invitation_is_refused(self, invitation):
        """Expiry is checked when the link is used."""
        Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
        with pytest.raises(errors.InvitationUnusable) as refusal:
            actions.accept_invitation(token=invitation.token, name="N", password="a-long-enough-password")
        assert refusal.value.code == "invitation_expired"
        assert not Membership.objects.filter(user__email=invitation.email).exists()

    def test_a_revoked_invitation_is_refused(self, organization, owner, invitation):
        """Revoking stops the link at once."""
        actions.revoke_invitation(organization=organization, actor=owner, invitation_id=invitation.pk)
        with pytest.raises(errors.InvitationUnusable) as refusal:
            actions.accept_invitation(token=invitation.token, name="N", password="a-long-enough-password")
        assert refusal.value.code == "invitation_revoked"

    def test_a_signed_in_person_with_the_invited_email_is_added(self, organization, owner):
        """An existing account joins without a new password."""
        person = factories.UserFactory(email="existing@example.com")
        [invitation] = invite(organization, owner, ["Existing@example.com"])
        membership, user = actions.accept_invitation(token=invitation.token, user=person)
        assert user == person and membership.is_active

    def test_a_signed_in_person_with_another_email_is_refused(self, organization, invitation):
        """They are told to sign out first; nothing changes."""
        stranger = factories.UserFactory()
        with pytest.raises(errors.InvitationForAnotherAccount, match="Sign out first"):
            actions.accept_invitation(token=invitation.token, user=stranger)
        invitation.refresh_from_db()
        assert invitation.is_pending

    def test_signing_up_for_an_email_with_an_account_is_refused(self, organization, invitation):
        """An account with a password must sign in; a link cannot take it over."""
        factories.UserFactory(email=invitation.email)
        with pytest.raises(errors.AccountExists):
            actions.accept_invitation(token=invitation.token, name="Mallory", password="a-long-enough-password")

    @pytest.mark.parametrize(
        "account",
        [
            pytest.param({}, id="never-had-a-password"),
            pytest.param({"is_staff": True}, id="staff-without-password"),
            pytest.param({"is_staff": True, "is_superuser": True}, id="superuser-without-password"),
        ],
    )
    def test_the_link_never_sets_the_password_of_an_account_without_one(self, owner, other_organization, account):
        """Issue 13, item 1: the owner of another organization (made by create_organization, no
        password yet), or an operator without one, cannot be taken over by whoever holds a link
        addressed to them: the account keeps no usable password and joins nothing."""
        victim, _ = actions.get_or_create_user("victim@corp.example")
        type(victim).objects.filter(pk=victim.pk).update(**account)
        actions.create_organization(name="Victim Corp", owner=victim)
        [invitation] = invite(other_organization, other_organization.memberships.get().user, [victim.email])

        with pytest.raises(errors.AccountExists, match=r"Sign in as victim@corp\.example"):
            actions.accept_invitation(token=invitation.token, name="Mallory", password="attacker-chosen-pw-1")

        victim.refresh_from_db()
        assert not victim.has_usable_password()
        assert victim.name == ""
        assert not Membership.objects.filter(organization=other_organization, user=victim).exists()
        invitation.refresh_from_db()
        assert invitation.is_pending

    def test_an_account_without_a_password_joins_once_its_owner_signed_in(self, organization, invitation):
        """Having set a password through the mailed link and signed in, the person accepts as themselves."""
        user, _ = actions.get_or_create_user(invitation.email)
        user.set_password("set-through-the-mail-1")
        user.save()
        membership, joined = actions.accept_invitation(token=invitation.token, user=user)
        assert joined == user and membership.organization == organization
        joined.refresh_from_db()
        assert joined.check_password("set-through-the-mail-1")

    def test_an_account_made_meanwhile_is_not_taken_over(self, organization, invitation, monkeypatch):
        """An account committed for the address between the check and the insert (through another
        organization's invitation, say) makes the unique email refuse the insert: the sign-up is
        refused as for any existing account, and nothing is half-made."""
        User = get_user_model()

        def email_taken_meanwhile(*args, **kwargs):
            raise IntegrityError('duplicate key value violates unique constraint "user_email_ci_unique"')

        monkeypatch.setattr(User.objects, "create_user", email_taken_meanwhile)
        with pytest.raises(errors.AccountExists):
            actions.accept_invitation(token=invitation.token, name="Mallory", password="attacker-chosen-pw-1")
        invitation.refresh_from_db()
        assert invitation.is_pending
        assert not Membership.objects.filter(organization=organization).exclude(role="owner").exists()


class TestRoles:
    def test_an_admin_makes_a_member_admin_and_back(self, organization, admin_user, member_user):
        """Role changes are recorded with before and after."""
        target = membership_of(member_user, organization)
        actions.change_role(organization=organization, actor=admin_user, membership_id=target.pk, role=Role.ADMIN)
        actions.change_role(organization=organization, actor=admin_user, membership_id=target.pk, role=Role.MEMBER)
        target.refresh_from_db()
        assert target.role == Role.MEMBER
        events = AuditEvent.objects.filter(action=Action.MEMBER_ROLE_CHANGED).order_by("id")
        assert [(e.before, e.after) for e in events] == [
            ({"role": "member"}, {"role": "admin"}),
            ({"role": "admin"}, {"role": "member"}),
        ]

    def test_an_admin_cannot_demote_the_owner(self, organization, owner, admin_user):
        """The owner's role changes only through a transfer."""
        with pytest.raises(errors.NotAllowed):
            actions.change_role(
                organization=organization,
                actor=admin_user,
                membership_id=membership_of(owner, organization).pk,
                role=Role.MEMBER,
            )
        assert membership_of(owner, organization).role == Role.OWNER

    def test_nobody_is_made_owner_by_a_role_change(self, organization, owner, member_user):
        """Not even the owner can promote a second owner."""
        with pytest.raises(errors.NotAllowed):
            actions.change_role(
                organization=organization,
                actor=owner,
                membership_id=membership_of(member_user, organization).pk,
                role=Role.OWNER,
            )

    def test_a_member_cannot_change_roles(self, organization, member_user, admin_user):
        """Members only look."""
        with pytest.raises(errors.NotAllowed):
            actions.change_role(
                organization=organization,
                actor=member_user,
                membership_id=membership_of(admin_user, organization).pk,
                role=Role.MEMBER,
            )

    def test_the_database_allows_one_owner(self, organization, member_user):
        """one_owner_per_organization refuses a second owner even outside the actions."""
        with pytest.raises(IntegrityError), transaction.atomic():
            Membership.objects.filter(user=member_user, organization=organization).update(role=Role.OWNER)


class TestTransfer:
    def test_the_owner_hands_ownership_on_and_becomes_admin(self, organization, owner, member_user):
        """After a transfer there is exactly one owner: the successor."""
        actions.transfer_ownership(
            organization=organization, actor=owner, membership_id=membership_of(member_user, organization).pk
        )
        assert membership_of(member_user, organization).role == Role.OWNER
        assert membership_of(owner, organization).role == Role.ADMIN
        assert Membership.objects.active().filter(organization=organization, role=Role.OWNER).count() == 1
        assert AuditEvent.objects.filter(action=Action.OWNERSHIP_TRANSFERRED).count() == 1

    def test_an_admin_cannot_transfer_ownership(self, organization, owner, admin_user):
        """Only the owner transfers."""
        with pytest.raises(errors.NotAllowed):
            actions.transfer_ownership(
                organization=organization, actor=admin_user, membership_id=membership_of(admin_user, organization).pk
            )
        assert membership_of(owner, organization).role == Role.OWNER

    def test_ownership_goes_only_to_an_active_member(self, organization, owner, member_user):
        """A removed member cannot become the owner."""
        target = membership_of(member_user, organization)
        actions.remove_member(organization=organization, actor=owner, membership_id=target.pk)
        with pytest.raises(errors.NotActiveMember):
            actions.transfer_ownership(organization=organization, actor=owner, membership_id=target.pk)


class TestRemove:
    def test_removing_ends_everything_the_member_holds_here(self, organization, owner, member_user):
        """Seats revoked, sessions ended, machines deactivated, keys for this organization revoked;
        what they hold elsewhere stays."""
        kse = factories.LicensePoolFactory(organization=organization, product="KSE")
        re_pool = factories.LicensePoolFactory(organization=organization, product="RE")
        seat = factories.LicensedUserFactory(pool=kse, user=member_user)
        session = factories.EngineSessionFactory(pool=re_pool, user=member_user)
        session.machine.user = member_user
        session.machine.save()
        key_here = factories.ApiKeyFactory(user=member_user, organization=organization)
        key_anywhere = factories.ApiKeyFactory(user=member_user)
        elsewhere = factories.LicensePoolFactory(product="RE")
        factories.MembershipFactory(organization=elsewhere.organization, user=member_user)
        session_elsewhere = factories.EngineSessionFactory(pool=elsewhere, user=member_user)

        target = membership_of(member_user, organization)
        actions.remove_member(organization=organization, actor=owner, membership_id=target.pk, ip_address="10.0.0.9")

        target.refresh_from_db()
        assert target.removed_at is not None and target.removed_by == owner
        assert LicensedUser.objects.get(pk=seat.pk).revoked_by == owner
        assert EngineSession.objects.get(pk=session.pk).end_reason == "member_removed"
        assert Machine.objects.get(pk=session.machine.pk).deactivated_at is not None
        assert ApiKey.objects.get(pk=key_here.pk).revoked_at is not None
        assert ApiKey.objects.get(pk=key_anywhere.pk).revoked_at is None
        assert EngineSession.objects.get(pk=session_elsewhere.pk).ended_at is None
        event = AuditEvent.objects.get(action=Action.MEMBER_REMOVED)
        assert event.ip_address == "10.0.0.9"
        assert event.after == {
            "kse_seats_revoked": 1,
            "sessions_ended": 1,
            "machines_deactivated": 1,
            "api_keys_revoked": 1,
            "queue_tickets_removed": 0,
        }

    def test_a_machine_someone_else_runs_on_stays_registered(self, organization, owner, member_user, admin_user):
        """Another member's live session is not cut off because the removed member used that machine last."""
        pool = factories.LicensePoolFactory(organization=organization, product="RE")
        machine = factories.MachineFactory(pool=pool, user=member_user)
        theirs = factories.EngineSessionFactory(pool=pool, machine=machine, user=admin_user)
        actions.remove_member(
            organization=organization, actor=owner, membership_id=membership_of(member_user, organization).pk
        )
        assert Machine.objects.get(pk=machine.pk).deactivated_at is None
        assert EngineSession.objects.get(pk=theirs.pk).ended_at is None

    def test_nobody_removes_the_owner(self, organization, owner, admin_user):
        """Neither an admin nor the owner."""
        target = membership_of(owner, organization)
        for actor in (admin_user, owner):
            with pytest.raises(errors.NotAllowed):
                actions.remove_member(organization=organization, actor=actor, membership_id=target.pk)
        assert membership_of(owner, organization).is_owner

    def test_a_member_cannot_remove_anyone(self, organization, member_user, admin_user):
        """Members only look."""
        with pytest.raises(errors.NotAllowed):
            actions.remove_member(
                organization=organization, actor=member_user, membership_id=membership_of(admin_user, organization).pk
            )

    def test_the_database_never_holds_a_removed_owner(self, organization, owner):
        """owner_is_never_removed holds even outside the actions."""
        with pytest.raises(IntegrityError), transaction.atomic():
            Membership.objects.filter(user=owner).update(removed_at=timezone.now())

    def test_a_removed_member_can_be_invited_again(self, organization, owner, member_user):
        """Removal keeps the old membership for the record and allows a new one."""
        actions.remove_member(
            organization=organization, actor=owner, membership_id=membership_of(member_user, organization).pk
        )
        [invitation] = invite(organization, owner, [member_user.email])
        membership, _ = actions.accept_invitation(token=invitation.token, user=member_user)
        assert membership.is_active
        assert Membership.objects.filter(organization=organization, user=member_user).count() == 2


class TestAuditAtomicity:
    def test_no_event_survives_a_rolled_back_change(self, organization, owner, member_user):
        """The audit event is part of the change's transaction."""
        target = membership_of(member_user, organization)

        class Abort(Exception):
            pass

        with pytest.raises(Abort), transaction.atomic():
            actions.change_role(organization=organization, actor=owner, membership_id=target.pk, role=Role.ADMIN)
            raise Abort
        assert not AuditEvent.objects.filter(action=Action.MEMBER_ROLE_CHANGED).exists()
        target.refresh_from_db()
        assert target.role == Role.MEMBER


class TestInviterLosesTheRight:
    """Issue 13, item 9: an invitation carries its sender's authority, and ends with it."""

    @pytest.fixture
    def comeback_link(self, organization, admin_user):
        [invitation] = invite(organization, admin_user, ["my-other-address@example.com"], role=Role.ADMIN)
        return invitation

    def test_removing_an_admin_revokes_the_invitations_they_sent(self, organization, owner, admin_user, comeback_link):
        """An admin about to be removed invites a second address of their own as admin; after the
        removal that link no longer brings them back, and the revocation is audited."""
        others = invite(organization, owner, ["someone@example.com"])
        actions.remove_member(
            organization=organization, actor=owner, membership_id=membership_of(admin_user, organization).pk
        )
        with pytest.raises(errors.InvitationUnusable) as refusal:
            actions.accept_invitation(token=comeback_link.token, name="Back Again", password="a-long-enough-password")
        assert refusal.value.code == "invitation_revoked"
        assert not Membership.objects.filter(user__email="my-other-address@example.com").exists()
        event = AuditEvent.objects.get(action=Action.INVITATION_REVOKED)
        assert (event.actor, event.target_label) == (owner, "my-other-address@example.com")
        assert event.after["reason"] == "inviter_removed"
        others[0].refresh_from_db()
        assert others[0].is_pending  # The owner's own invitations stand.

    def test_making_an_admin_a_member_revokes_the_invitations_they_sent(
        self, organization, owner, admin_user, comeback_link
    ):
        """A demoted admin could no more invite; the links they sent stop working too."""
        actions.change_role(
            organization=organization,
            actor=owner,
            membership_id=membership_of(admin_user, organization).pk,
            role=Role.MEMBER,
        )
        comeback_link.refresh_from_db()
        assert comeback_link.revoked_at is not None
        with pytest.raises(errors.InvitationUnusable):
            actions.accept_invitation(token=comeback_link.token, name="Back Again", password="a-long-enough-password")
        event = AuditEvent.objects.get(action=Action.INVITATION_REVOKED)
        assert event.after["reason"] == "inviter_demoted"

    def test_promoting_or_handing_on_ownership_keeps_them(self, organization, owner, admin_user, comeback_link):
        """Only losing the right to invite ends the invitations: an owner who becomes admin keeps it."""
        [owners_invitation] = invite(organization, owner, ["friend@example.com"])
        actions.transfer_ownership(
            organization=organization, actor=owner, membership_id=membership_of(admin_user, organization).pk
        )
        for invitation in (comeback_link, owners_invitation):
            invitation.refresh_from_db()
            assert invitation.is_pending
