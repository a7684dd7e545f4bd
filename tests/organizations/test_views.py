import csv
import io
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from organizations import actions
from organizations.audit import Action
from organizations.models import AuditEvent, Invitation, Membership, Role
from tests import factories
from tests.factories import PASSWORD
from tests.organizations.conftest import membership_of

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def invitation_sent_by(admin, organization):
    """A pending invitation of their-friend@example.com that `admin` sent."""
    [invitation] = actions.invite_members(
        organization=organization,
        actor=admin,
        emails=["their-friend@example.com"],
        role="member",
        link_for=lambda invitation: "http://testserver/",
    )
    return invitation


def members_url(organization):
    return reverse("members", args=[organization.public_id])


def management_posts(organization, membership, invitation):
    """Every management URL of the members page, with a body that would succeed for a manager."""
    org_id = organization.public_id
    return [
        (reverse("member_invite", args=[org_id]), {"emails": "x@example.com", "role": "member"}),
        (reverse("member_change_role", args=[org_id, membership.pk]), {"role": "admin"}),
        (reverse("member_remove", args=[org_id, membership.pk]), {}),
        (
            reverse("ownership_transfer", args=[org_id]),
            {"email": membership.user.email, "organization_name": organization.name, "password": PASSWORD},
        ),
        (reverse("invitation_resend", args=[org_id, invitation.pk]), {}),
        (reverse("invitation_revoke", args=[org_id, invitation.pk]), {}),
    ]


class TestHome:
    def test_a_member_lands_on_their_first_organizations_licenses(self, owner_client, organization):
        """Signing in leads to the licenses of the organization first by name."""
        response = owner_client.get("/")
        assert response.status_code == 302
        assert response["Location"] == reverse("licenses", args=[organization.public_id])

    def test_home_and_pages_outside_an_organization_follow_the_last_one_visited(
        self, owner_client, organization, owner
    ):
        """Someone in two organizations comes back to the one they last worked in, not the first by name."""
        later_by_name = factories.OrganizationFactory(name="Zeta Labs")
        factories.MembershipFactory(organization=later_by_name, user=owner, role="admin")
        owner_client.get(reverse("members", args=[later_by_name.public_id]))
        assert owner_client.get("/")["Location"] == reverse("licenses", args=[later_by_name.public_id])
        api_keys_page = owner_client.get(reverse("api_keys"))
        assert api_keys_page.context["current_organization"] == later_by_name
        owner_client.get(reverse("members", args=[organization.public_id]))
        assert owner_client.get("/")["Location"] == reverse("licenses", args=[organization.public_id])

    @pytest.mark.parametrize("cookie", ["12\x00", "\x00", "x" * 300, "1 OR 1=1", "é"])
    def test_a_malformed_last_organization_cookie_is_treated_as_absent(self, owner_client, organization, owner, cookie):
        """Issue 13, item 10: a NUL byte in the cookie made the home page a 500 on PostgreSQL until the
        cookie was cleared. Any value that cannot be an organization id now counts as no cookie."""
        factories.MembershipFactory(organization=factories.OrganizationFactory(name="Zeta Labs"), user=owner)
        owner_client.cookies["last_organization"] = cookie
        response = owner_client.get("/")
        assert response.status_code == 302
        assert response["Location"] == reverse("licenses", args=[organization.public_id])
        assert owner_client.get(reverse("api_keys")).context["current_organization"] == organization

    def test_someone_without_organization_is_told_to_ask_for_an_invitation(self, client):
        """No organization: a page saying so, not an error."""
        client.force_login(factories.UserFactory())
        response = client.get("/")
        assert response.status_code == 200
        assert b"not in any organization yet" in response.content
        assert b"invite you" in response.content

    def test_signed_out_visitors_are_sent_to_sign_in(self, client, db):
        """The portal is private."""
        response = client.get("/")
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))

    def test_org_home_leads_to_that_organizations_licenses(self, owner_client, organization):
        """The switcher's links go to the organization's licenses."""
        response = owner_client.get(reverse("org_home", args=[organization.public_id]))
        assert response["Location"] == reverse("licenses", args=[organization.public_id])

    def test_people_sign_in_with_email_and_password(self, client, owner, organization):
        """The sign-in form takes the email, in any case."""
        response = client.post(reverse("login"), {"username": owner.email.upper(), "password": factories.PASSWORD})
        assert response["Location"] == reverse("home")
        assert client.get("/")["Location"] == reverse("licenses", args=[organization.public_id])


class TestMembersPage:
    def test_the_three_lists_show_what_a_manager_needs(self, owner_client, organization, owner, member_user):
        """Active members with their licenses, pending invitations with their link, removed members
        with who removed them."""
        kse = factories.LicensePoolFactory(organization=organization, product="KSE")
        factories.LicensedUserFactory(pool=kse, user=member_user)
        invitation = factories.InvitationFactory(organization=organization, invited_by=owner)
        gone = factories.MembershipFactory(
            organization=organization, removed_at=timezone.now(), removed_by=owner, user__name="Gone Person"
        )
        response = owner_client.get(members_url(organization))
        page = response.content.decode()
        assert response.status_code == 200
        assert member_user.email in page and "KSE" in page
        assert invitation.email in page
        assert f"http://testserver/invitations/{invitation.token}/" in page
        assert gone.user.email in page and "Gone Person" in page and owner.display_name in page

    def test_last_seen_is_the_later_of_sign_in_and_engine_heartbeat(self, owner_client, organization, member_user):
        """An engine heartbeat after the last sign-in counts as being seen."""
        member_user.last_login = timezone.now() - timedelta(days=10)
        member_user.save()
        pool = factories.LicensePoolFactory(organization=organization)
        factories.EngineSessionFactory(pool=pool, user=member_user, started_at=timezone.now() - timedelta(hours=3))
        membership = (
            Membership.objects.filter(user=member_user).with_activity(organization).get(organization=organization)
        )
        assert timezone.now() - membership.last_seen < timedelta(hours=4)
        response = owner_client.get(members_url(organization))
        assert b"3 h ago" in response.content

    def test_last_heartbeat_is_the_latest_of_all_sessions_in_the_organization(self, organization, member_user):
        """The members page's last heartbeat is the latest of the person's sessions in this
        organization's pools, whichever ended last or is still open, and whatever their other
        organizations saw."""
        now = timezone.now()
        pool = factories.LicensePoolFactory(organization=organization)
        elsewhere = factories.LicensePoolFactory(product="RE")

        def session(pool, beat, ended=None, **fields):
            return factories.EngineSessionFactory(
                pool=pool,
                user=member_user,
                started_at=beat - timedelta(hours=1),
                last_heartbeat_at=beat,
                lease_expires_at=beat + timedelta(minutes=5),
                ended_at=ended,
                end_reason="released" if ended else "",
                **fields,
            )

        def latest():
            membership = Membership.objects.filter(user=member_user, organization=organization)
            return membership.with_activity(organization).get().last_heartbeat_at

        assert latest() is None
        session(pool, now - timedelta(days=3), ended=now - timedelta(days=3))
        assert latest() == now - timedelta(days=3)
        # Heartbeated last but ended before one that heartbeated earlier and ran on.
        session(pool, now - timedelta(hours=5), ended=now - timedelta(hours=5))
        session(pool, now - timedelta(hours=6), ended=now - timedelta(hours=4))
        assert latest() == now - timedelta(hours=5)
        # A heartbeat that raced the end and was recorded a moment after it.
        session(pool, now - timedelta(hours=2), ended=now - timedelta(hours=2, seconds=1))
        assert latest() == now - timedelta(hours=2)
        session(elsewhere, now - timedelta(minutes=1), ended=now)
        assert latest() == now - timedelta(hours=2)
        session(pool, now - timedelta(minutes=30))  # open
        assert latest() == now - timedelta(minutes=30)

    def test_members_see_the_lists_but_no_invitation_links_or_controls(
        self, member_client, organization, owner, invitation
    ):
        """Invitation links are bearer tokens: members see who is invited, not the link."""
        page = member_client.get(members_url(organization)).content.decode()
        assert invitation.email in page
        assert invitation.token not in page
        assert "Send invitations" not in page and "Change role" not in page and "Export CSV" not in page

    def test_the_query_count_does_not_grow_with_members(
        self, owner_client, organization, owner, django_assert_max_num_queries
    ):
        """120 members with seats, sessions and invitations render in a fixed number of queries."""
        kse = factories.LicensePoolFactory(organization=organization, product="KSE", quota=200)
        re_pool = factories.LicensePoolFactory(organization=organization, product="RE", quota=200)
        users = factories.UserFactory.create_batch(120, password=None)
        for user in users:
            Membership.objects.create(organization=organization, user=user)
        for user in users[:30]:
            factories.LicensedUserFactory(pool=kse, user=user)
            factories.EngineSessionFactory(pool=re_pool, user=user)
        factories.InvitationFactory.create_batch(20, organization=organization, invited_by=owner)
        for user in factories.UserFactory.create_batch(10, password=None):
            Membership.objects.create(organization=organization, user=user, removed_at=timezone.now(), removed_by=owner)
        with django_assert_max_num_queries(9):
            response = owner_client.get(members_url(organization))
        assert response.status_code == 200
        assert response.content.count(b'id="member-') == 50
        assert b"Page 1 of 3" in response.content

    def test_pages_of_active_members(self, owner_client, organization):
        """The active list is paginated; an out-of-range page shows the last."""
        for user in factories.UserFactory.create_batch(55, password=None):
            Membership.objects.create(organization=organization, user=user)
        response = owner_client.get(members_url(organization) + "?page=9")
        assert b"Page 2 of 2" in response.content
        assert response.content.count(b'id="member-') == 6


class TestInvitePage:
    def test_invite_several_with_javascript_off(self, owner_client, organization):
        """A plain post invites everyone and redirects back with a message."""
        response = owner_client.post(
            reverse("member_invite", args=[organization.public_id]),
            {"emails": "a@example.com, b@example.com\nc@example.com", "role": "admin"},
            follow=True,
        )
        assert response.redirect_chain[-1][0] == members_url(organization)
        assert b"Invitation sent to a@example.com, b@example.com, c@example.com." in response.content
        assert list(Invitation.objects.order_by("email").values_list("email", "role")) == [
            ("a@example.com", "admin"),
            ("b@example.com", "admin"),
            ("c@example.com", "admin"),
        ]

    def test_invite_in_place_with_htmx(self, owner_client, organization):
        """The form comes back empty with a notice; the pending list is swapped out of band."""
        response = owner_client.post(
            reverse("member_invite", args=[organization.public_id]),
            {"emails": "a@example.com b@example.com", "role": "member"},
            **HTMX,
        )
        body = response.content.decode()
        assert response.status_code == 200
        assert "<html" not in body
        assert body.index('id="invite"') < body.index('id="pending-invitations"')
        assert 'hx-swap-oob="true"' in body
        assert "Pending invitations (2)" in body

    @pytest.mark.parametrize("htmx", [False, True], ids=["plain", "htmx"])
    def test_a_bad_email_re_renders_the_form_and_invites_nobody(self, owner_client, organization, member_user, htmx):
        """Each bad email is named beside the form; the typed text is kept."""
        typed = f"ok@example.com, not-an-email, {member_user.email}"
        response = owner_client.post(
            reverse("member_invite", args=[organization.public_id]),
            {"emails": typed, "role": "member"},
            **(HTMX if htmx else {}),
        )
        assert response.status_code == 200
        assert b"not-an-email is not a valid email address." in response.content
        assert typed.encode() in response.content
        assert not Invitation.objects.exists()

    def test_an_already_invited_or_member_email_is_named(self, owner_client, organization, member_user, invitation):
        """Errors from the rules come back beside the form too."""
        response = owner_client.post(
            reverse("member_invite", args=[organization.public_id]),
            {"emails": f"{member_user.email} {invitation.email}", "role": "member"},
        )
        assert f"{member_user.email} is already a member.".encode() in response.content
        assert f"{invitation.email} is already invited".encode() in response.content
        assert Invitation.objects.count() == 1

    def test_an_email_too_long_to_store_is_refused_as_invalid(self, owner_client, organization):
        """Refused beside the form, never a database error."""
        long_email = "a" * 250 + "@example.com"
        response = owner_client.post(
            reverse("member_invite", args=[organization.public_id]), {"emails": long_email, "role": "member"}
        )
        assert response.status_code == 200
        assert b"is not a valid email address." in response.content

    def test_invite_role_must_be_admin_or_member(self, owner_client, organization):
        """Owner is not a choice."""
        response = owner_client.post(
            reverse("member_invite", args=[organization.public_id]), {"emails": "a@example.com", "role": "owner"}
        )
        assert response.status_code == 200
        assert b"Select a valid choice" in response.content
        assert not Invitation.objects.exists()


class TestMemberActions:
    def test_role_change_in_place_returns_the_row(self, admin_client, organization, member_user):
        """With htmx, the row comes back showing the new role."""
        membership = membership_of(member_user, organization)
        response = admin_client.post(
            reverse("member_change_role", args=[organization.public_id, membership.pk]), {"role": "admin"}, **HTMX
        )
        body = response.content.decode()
        assert body.strip().startswith(f'<tr id="member-{membership.pk}"')
        assert '<td data-label="Role">Admin</td>' in body
        assert "is now admin" in body
        membership.refresh_from_db()
        assert membership.role == Role.ADMIN

    def test_role_change_without_javascript_redirects_with_a_message(self, owner_client, organization, member_user):
        """The plain post lands back on the members page."""
        membership = membership_of(member_user, organization)
        response = owner_client.post(
            reverse("member_change_role", args=[organization.public_id, membership.pk]),
            {"role": "admin", "list-page": "1"},
            follow=True,
        )
        assert response.redirect_chain[-1][0] == members_url(organization) + "?page=1"
        assert b"is now admin." in response.content

    def test_an_admin_demoting_themselves_in_place_gets_a_fresh_page(self, admin_client, organization, admin_user):
        """Their controls on every row are gone, so htmx is told to reload instead of swapping one row."""
        membership = membership_of(admin_user, organization)
        response = admin_client.post(
            reverse("member_change_role", args=[organization.public_id, membership.pk]), {"role": "member"}, **HTMX
        )
        assert response["HX-Refresh"] == "true"
        assert membership_of(admin_user, organization).role == Role.MEMBER

    def test_an_admin_trying_to_demote_the_owner_sees_why_beside_the_row(self, admin_client, organization, owner):
        """The refusal is shown in the row; the owner stays owner."""
        membership = membership_of(owner, organization)
        response = admin_client.post(
            reverse("member_change_role", args=[organization.public_id, membership.pk]), {"role": "member"}, **HTMX
        )
        assert b"changes only when the owner transfers ownership" in response.content
        assert membership_of(owner, organization).role == Role.OWNER

    def test_remove_in_place_updates_the_removed_list_and_count(self, owner_client, organization, member_user):
        """The row disappears; the removed list and the active count are swapped out of band."""
        membership = membership_of(member_user, organization)
        response = owner_client.post(reverse("member_remove", args=[organization.public_id, membership.pk]), **HTMX)
        body = response.content.decode()
        assert body.count('hx-swap-oob="true"') == 3
        assert 'id="removed-members"' in body and member_user.email in body
        assert '<span id="active-count" hx-swap-oob="true">1</span>' in body
        assert '<section id="pending-invitations" aria-labelledby="pending-heading" hx-swap-oob="true">' in body

    def test_removing_an_admin_in_place_drops_their_invitations_from_the_pending_list(
        self, owner_client, organization, admin_user
    ):
        """The invitations the admin sent are revoked with them, and the pending list shows it at once."""
        invitation_sent_by(admin_user, organization)
        membership = membership_of(admin_user, organization)
        response = owner_client.post(reverse("member_remove", args=[organization.public_id, membership.pk]), **HTMX)
        pending = response.content.decode().split('id="pending-invitations"')[1]
        assert "their-friend@example.com" not in pending
        assert not Invitation.objects.pending().exists()

    def test_demoting_an_admin_with_pending_invitations_in_place_refreshes_the_page(
        self, owner_client, organization, admin_user
    ):
        """Their invitations are revoked with the role, so the page comes back whole, saying so."""
        invitation_sent_by(admin_user, organization)
        membership = membership_of(admin_user, organization)
        response = owner_client.post(
            reverse("member_change_role", args=[organization.public_id, membership.pk]), {"role": "member"}, **HTMX
        )
        assert response["HX-Refresh"] == "true"
        assert not Invitation.objects.pending().exists()
        page = owner_client.get(members_url(organization)).content.decode()
        assert "is now member." in page
        assert "their-friend@example.com" not in page.split('id="pending-invitations"')[1]

    def test_remove_without_javascript(self, owner_client, organization, member_user):
        """The plain post redirects with a message and the member shows as removed."""
        membership = membership_of(member_user, organization)
        response = owner_client.post(
            reverse("member_remove", args=[organization.public_id, membership.pk]), follow=True
        )
        assert b"was removed" in response.content
        membership.refresh_from_db()
        assert membership.removed_at is not None

    def test_the_owner_transfers_ownership(self, owner_client, organization, owner, admin_user):
        """The successor becomes owner; the old owner an admin."""
        response = owner_client.post(
            reverse("ownership_transfer", args=[organization.public_id]),
            {"email": admin_user.email, "organization_name": organization.name, "password": PASSWORD},
            follow=True,
        )
        assert b"is now the owner" in response.content
        assert membership_of(admin_user, organization).role == Role.OWNER
        assert membership_of(owner, organization).role == Role.ADMIN

    def test_transfer_to_someone_not_a_member_re_renders_with_the_reason(
        self, owner_client, organization, owner, other_organization
    ):
        """Outsiders, removed members and the owner themself cannot receive ownership."""
        outsider = other_organization.memberships.get().user
        url = reverse("ownership_transfer", args=[organization.public_id])
        response = owner_client.post(url, {"email": outsider.email})
        assert f"{outsider.email} is not an active member of this organization.".encode() in response.content
        assert b"You are already the owner." in owner_client.post(url, {"email": owner.email}).content
        assert b"Enter a valid email address." in owner_client.post(url, {"email": "nope"}).content
        assert membership_of(owner, organization).role == Role.OWNER

    def test_resend_and_revoke_in_place(self, owner_client, organization, invitation):
        """Both swap the pending list; a revoked invitation leaves it."""
        org_id = organization.public_id
        response = owner_client.post(reverse("invitation_resend", args=[org_id, invitation.pk]), **HTMX)
        assert b"sent again" in response.content and invitation.email.encode() in response.content
        response = owner_client.post(reverse("invitation_revoke", args=[org_id, invitation.pk]), **HTMX)
        assert b"revoked" in response.content
        assert b"Pending invitations (0)" in response.content
        response = owner_client.post(reverse("invitation_revoke", args=[org_id, invitation.pk]), **HTMX)
        assert b"already accepted or revoked" in response.content

    def test_revoke_without_javascript(self, owner_client, organization, invitation):
        """The plain post redirects with a message."""
        response = owner_client.post(
            reverse("invitation_revoke", args=[organization.public_id, invitation.pk]), follow=True
        )
        assert f"Invitation to {invitation.email} revoked.".encode() in response.content

    def test_every_change_is_in_the_audit_log_with_the_address(self, owner_client, organization, member_user):
        """Page actions record the request's address."""
        membership = membership_of(member_user, organization)
        owner_client.post(
            reverse("member_change_role", args=[organization.public_id, membership.pk]),
            {"role": "admin"},
            REMOTE_ADDR="192.0.2.7",
        )
        assert AuditEvent.objects.get(action=Action.MEMBER_ROLE_CHANGED).ip_address == "192.0.2.7"


class TestCsv:
    def test_export_lists_active_and_removed_members(self, owner_client, organization, owner, member_user):
        """One row per membership with role, status, licenses and dates."""
        kse = factories.LicensePoolFactory(organization=organization, product="KSE")
        factories.LicensedUserFactory(pool=kse, user=member_user)
        factories.MembershipFactory(
            organization=organization, removed_at=timezone.now(), removed_by=owner, user__name="=cmd()"
        )
        response = owner_client.get(reverse("members_export", args=[organization.public_id]))
        assert response["Content-Type"].startswith("text/csv")
        assert "attachment" in response["Content-Disposition"]
        rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
        by_email = {row["email"]: row for row in rows}
        assert by_email[owner.email]["role"] == "owner"
        assert by_email[member_user.email]["kse_license"] == "yes"
        removed = next(row for row in rows if row["status"] == "removed")
        assert removed["removed_by"] == owner.email
        assert removed["name"] == "'=cmd()"

    def test_members_cannot_export(self, member_client, organization):
        """The export is for those who manage."""
        assert member_client.get(reverse("members_export", args=[organization.public_id])).status_code == 403


class TestScoping:
    @pytest.fixture
    def targets(self, organization, owner, member_user):
        return membership_of(member_user, organization), factories.InvitationFactory(
            organization=organization, invited_by=owner
        )

    def test_another_organizations_owner_gets_404_everywhere(self, other_owner_client, organization, targets):
        """Not even the existence of this organization's members is confirmed."""
        membership, invitation = targets
        assert other_owner_client.get(members_url(organization)).status_code == 404
        assert other_owner_client.get(reverse("members_export", args=[organization.public_id])).status_code == 404
        for url, data in management_posts(organization, membership, invitation):
            assert other_owner_client.post(url, data).status_code == 404, url
        assert Invitation.objects.filter(organization=organization).count() == 1
        assert membership_of(membership.user, organization).role == Role.MEMBER

    def test_objects_of_another_organization_are_404_from_ones_own(
        self, owner_client, organization, other_organization
    ):
        """A membership or invitation id of another organization does not resolve under mine."""
        theirs = other_organization.memberships.get()
        their_invitation = factories.InvitationFactory(organization=other_organization)
        org_id = organization.public_id
        assert (
            owner_client.post(reverse("member_change_role", args=[org_id, theirs.pk]), {"role": "admin"}).status_code
            == 404
        )
        assert owner_client.post(reverse("member_remove", args=[org_id, theirs.pk])).status_code == 404
        assert owner_client.post(reverse("invitation_revoke", args=[org_id, their_invitation.pk])).status_code == 404
        assert owner_client.post(reverse("invitation_resend", args=[org_id, their_invitation.pk])).status_code == 404

    def test_an_organization_id_with_a_nul_byte_is_not_found(self, owner_client, db):
        """PostgreSQL refuses strings with NUL: such an id in the URL is a 404, never a 500."""
        assert owner_client.get("/o/1%002/members/").status_code == 404
        assert owner_client.post("/o/1%002/members/invite/", {"emails": "a@example.com"}).status_code == 404
        assert owner_client.get("/invitations/abc%00def/").status_code == 404

    def test_a_member_gets_403_on_every_management_post(self, client, organization, targets):
        """Members only look."""
        membership, invitation = targets
        client.force_login(factories.MembershipFactory(organization=organization).user)
        for url, data in management_posts(organization, membership, invitation):
            assert client.post(url, data).status_code == 403, url
        assert Invitation.objects.filter(organization=organization).count() == 1
        assert membership_of(membership.user, organization).role == Role.MEMBER

    def test_an_admin_cannot_transfer_ownership(self, admin_client, organization, member_user):
        """Transfer is the owner's alone."""
        response = admin_client.post(
            reverse("ownership_transfer", args=[organization.public_id]), {"email": member_user.email}
        )
        assert response.status_code == 403

    def test_a_post_without_csrf_token_is_refused(self, organization, owner, targets):
        """Every management form needs the CSRF token."""
        membership, invitation = targets
        client = Client(enforce_csrf_checks=True)
        client.force_login(owner)
        for url, data in management_posts(organization, membership, invitation):
            assert client.post(url, data).status_code == 403, url
        assert Invitation.objects.filter(organization=organization).count() == 1
        assert membership_of(membership.user, organization).is_active

    def test_gets_to_management_urls_are_not_allowed(self, owner_client, organization, targets):
        """Writes are POST only; a GET of Remove only asks (the confirmation page without JavaScript)."""
        membership, invitation = targets
        remove_url = reverse("member_remove", args=[organization.public_id, membership.pk])
        for url, _ in management_posts(organization, membership, invitation):
            assert owner_client.get(url).status_code == (200 if url == remove_url else 405), url
        assert membership_of(membership.user, organization).is_active
