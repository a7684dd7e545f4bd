"""Refusals raised by the membership actions. The pages show `message` beside what was tried;
`code` keeps them apart for tests and any future API."""


class MembershipRefusal(Exception):
    code = "refused"

    def __init__(self, message, *, details=None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class NotAllowed(MembershipRefusal):
    """The actor's role does not allow this (an admin demoting the owner, say)."""

    code = "not_allowed"


class InvalidInvitations(MembershipRefusal):
    """Some of the emails cannot be invited; `details["emails"]` maps each to its reason.
    None of the batch is invited then."""

    code = "invalid_invitations"


class InvitationUnusable(MembershipRefusal):
    """The link was revoked, already used, or has expired."""

    def __init__(self, message, *, code):
        super().__init__(message)
        self.code = code


class InvitationForAnotherAccount(MembershipRefusal):
    code = "wrong_account"


class AccountExists(MembershipRefusal):
    """Signing up through a link for an email that already has an account: sign in instead."""

    code = "account_exists"


class NotPending(MembershipRefusal):
    """The invitation was accepted or revoked meanwhile."""

    code = "not_pending"


class NotActiveMember(MembershipRefusal):
    """The membership acted on was removed meanwhile."""

    code = "not_active_member"
