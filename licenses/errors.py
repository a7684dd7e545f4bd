"""Refusals raised by the license actions. Each interface translates them: the engine API into its
coded JSON error (contract/engine-api.md) with `status`, the pages into a message beside the form."""

from django.core.exceptions import PermissionDenied


class LicenseRefusal(Exception):
    code = "refused"
    status = 409

    def __init__(self, message, *, details=None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class SessionQuotaExceeded(LicenseRefusal):
    code = "session_quota_exceeded"
    status = 409


class MachineQuotaExceeded(LicenseRefusal):
    code = "machine_quota_exceeded"
    status = 409


class SeatQuotaExceeded(LicenseRefusal):
    """KSE: granting would make licensed users (plus unexpired offline licenses) exceed the quota."""

    code = "seat_quota_exceeded"
    status = 409


class NotAllowed(LicenseRefusal, PermissionDenied):
    """Only owners and admins manage licenses. A PermissionDenied too, so a page whose caller lost
    the role since its own check answers 403 like that check would have."""

    code = "not_allowed"
    status = 403


class NotLicensed(LicenseRefusal):
    code = "not_licensed"
    status = 403


class LicenseExpired(LicenseRefusal):
    code = "license_expired"
    status = 403


class MachineNotAllowed(LicenseRefusal):
    code = "machine_not_allowed"
    status = 403


class OrganizationNotFound(LicenseRefusal):
    code = "organization_not_found"
    status = 404


class NoLicensePool(LicenseRefusal):
    code = "no_license_pool"
    status = 404


class OrganizationRequired(LicenseRefusal):
    code = "organization_required"
    status = 409


class SessionNotFound(LicenseRefusal):
    code = "session_not_found"
    status = 404


class TicketNotFound(LicenseRefusal):
    """A queue ticket that is unknown, another request's, used up, removed or dropped."""

    code = "ticket_not_found"
    status = 404


class SessionTerminated(LicenseRefusal):
    code = "session_terminated"
    status = 410


class IdempotencyKeyInUse(LicenseRefusal):
    code = "idempotency_key_in_use"
    status = 409

    def __init__(self):
        super().__init__("A request with this Idempotency-Key is still being processed; retry in a moment.")


class IdempotencyKeyReused(LicenseRefusal):
    code = "idempotency_key_reused"
    status = 422

    def __init__(self):
        super().__init__("This Idempotency-Key was used with a different request body; use a new key.")


class InvalidRequest(LicenseRefusal):
    """A page or command asked for something impossible (an expiry past the subscription, say)."""

    code = "invalid_request"
    status = 400
