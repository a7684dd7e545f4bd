"""What can go wrong, and the sysexits code (BSD sysexits.h) each failure exits with, so a CI script
can tell the client's own failures from the wrapped command's exit codes."""

from __future__ import annotations

EX_USAGE = 64  # bad command line, or the portal called the request bad
EX_DATAERR = 65  # an offline license file that does not verify
EX_UNAVAILABLE = 69  # no license: quota, machine quota, a wait that ran out, a license lost
EX_SOFTWARE = 70  # a fault in the client itself
EX_TEMPFAIL = 75  # the portal could not be reached, or stayed unavailable, for --connect-timeout
EX_PROTOCOL = 76  # something answered that is not the portal's engine API
EX_NOPERM = 77  # the key is bad, revoked or expired, or its user is not licensed there
EX_CONFIG = 78  # the client is missing something it needs (verify-offline without cryptography)

# The contract's error codes (contract/engine-api.md, "Error codes").
EXIT_CODES = {
    "invalid_request": EX_USAGE,
    "organization_required": EX_USAGE,
    "session_not_found": EX_USAGE,
    "not_found": EX_USAGE,
    "invalid_api_key": EX_NOPERM,
    "not_licensed": EX_NOPERM,
    "license_expired": EX_NOPERM,
    "machine_not_allowed": EX_NOPERM,
    "organization_not_found": EX_NOPERM,
    "no_license_pool": EX_NOPERM,
    "session_quota_exceeded": EX_UNAVAILABLE,
    "machine_quota_exceeded": EX_UNAVAILABLE,
    "session_terminated": EX_UNAVAILABLE,
    "ticket_not_found": EX_UNAVAILABLE,
    "idempotency_key_reused": EX_SOFTWARE,
    "idempotency_key_in_use": EX_TEMPFAIL,
    "rate_limited": EX_TEMPFAIL,
    "service_unavailable": EX_TEMPFAIL,
}
# Codes a newer portal may add are judged by their HTTP status.
EXIT_CODES_BY_STATUS = {
    400: EX_USAGE,
    401: EX_NOPERM,
    403: EX_NOPERM,
    404: EX_USAGE,
    409: EX_UNAVAILABLE,
    410: EX_UNAVAILABLE,
    422: EX_USAGE,
    429: EX_TEMPFAIL,
}


class ClientError(Exception):
    """A failure the command reports in one line on stderr and exits with `exit_code`."""

    exit_code = EX_SOFTWARE
    code = "client_error"

    def __init__(self, message: str, *, code: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class UsageError(ClientError):
    exit_code = EX_USAGE
    code = "usage"


class PortalRefusal(ClientError):
    """The portal answered with the contract's error body."""

    def __init__(self, status: int, code: str, message: str, details: dict | None = None):
        exit_code = EXIT_CODES.get(code)
        if exit_code is None:
            exit_code = EXIT_CODES_BY_STATUS.get(status, EX_TEMPFAIL if status >= 500 else EX_PROTOCOL)
        self.status = status
        self.details = details or {}
        super().__init__(message + self._hint(code), code=code, exit_code=exit_code)

    def _hint(self, code: str) -> str:
        choices = self.details.get("organizations") if code == "organization_required" else None
        if not isinstance(choices, list):
            return ""
        named = ", ".join(
            f"{choice.get('id')} ({choice.get('name')})" for choice in choices[:20] if isinstance(choice, dict)
        )
        return f" Choose one with --org: {named}." if named else ""


class PortalUnreachable(ClientError):
    """Retrying with backoff for the whole budget did not get an answer (or only 429s and 503s)."""

    exit_code = EX_TEMPFAIL
    code = "portal_unreachable"


class UnexpectedResponse(ClientError):
    """An answer that is not the engine API's: a wrong URL, a proxy's error page."""

    exit_code = EX_PROTOCOL
    code = "unexpected_response"


class Interrupted(ClientError):
    """A signal asked the client to stop before the wrapped command started."""

    code = "interrupted"

    def __init__(self, signal_number: int):
        super().__init__(f"stopped by signal {signal_number}", exit_code=128 + signal_number)
        self.signal_number = signal_number
