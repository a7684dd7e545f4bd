"""The engine API, version 1 (contract/engine-api.md): thin handlers over sessions_app.actions.

Each handler parses, authenticates and calls one action; `endpoint` wraps them all so that every
answer, including a refusal, an unknown path or a lost database, is the contract's JSON error body
with an X-Request-ID, and no input reaches a 5xx.
"""

import json
import logging
import re
import uuid
from functools import wraps

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from licenses import errors
from licenses.models import LicensePool
from organizations.audit import client_ip

from . import actions, hotpath, metrics, ratelimit
from . import queue as queue_rules
from .actions import iso
from .models import API_KEY_PREFIX, hash_api_key
from .openapi import openapi_document

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
# The request has one level; the margin is for fields a later version may add.
MAX_JSON_DEPTH = 8
RETRY_AFTER_UNAVAILABLE = 5
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
BEARER = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)
RAW_KEY = re.compile(re.escape(API_KEY_PREFIX) + r"[A-Za-z0-9_\-]{20,100}")
SESSION_ID = re.compile(r"s_[A-Za-z0-9_\-]{1,38}")
TICKET_ID = re.compile(r"q_[A-Za-z0-9_\-]{1,38}")
MACHINE_ID = re.compile(r"[A-Za-z0-9._:\-]+")
ORG_ID = re.compile(r"[A-Za-z0-9._\-]+")
# Free text still excludes control characters and lone surrogates: PostgreSQL refuses NUL, UTF-8
# cannot encode a lone surrogate, and pages should never carry terminal escapes an engine sent.
PRINTABLE = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]*")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class ApiError(Exception):
    """A refusal made by the API layer itself (authentication, validation, limits)."""

    def __init__(self, status, code, message, details=None, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def error_body(code, message, details=None):
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(status, code, message, details=None, headers=None):
    response = JsonResponse(error_body(code, message, details), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def invalid_request(fields, message="The request is invalid; see details.fields."):
    return ApiError(400, "invalid_request", message, {"fields": fields})


def _request_id(request):
    incoming = request.headers.get("X-Request-ID", "")
    return incoming if REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def _rate_limited(message, limit, requests, wait):
    return ApiError(
        429,
        "rate_limited",
        f"{message} Retry after {wait} seconds.",
        {"limits": {limit: {"requests": requests, "seconds": ratelimit.WINDOW_SECONDS}}},
        {"Retry-After": str(wait)},
    )


def _presented_hash(request):
    """The hash of the key in a well-formed Authorization header, or None. Only the hash travels
    further, so the raw key cannot end up in a log or an error report."""
    match = BEARER.fullmatch(request.headers.get("Authorization", ""))
    if match is None or not RAW_KEY.fullmatch(match.group(1)):
        return None
    return hash_api_key(match.group(1))


def _too_many_failures(wait):
    limit = settings.API_AUTH_FAILURE_LIMIT
    return _rate_limited(
        f"Too many failed authentications from this address: at most {limit} a minute.", "auth_failures", limit, wait
    )


def _authenticate(request, *, counted_wait=None):
    """The usable key presented, counted against its rate limit. One answer for every kind of failure,
    so the API cannot be used to learn which keys exist, were revoked or have expired.

    A valid key costs one cache round trip (its counter) and no database query beyond its lookup; a
    failure counts against the client's address instead (sessions_app.ratelimit). `counted_wait` is
    what counting this request already answered (_at_once counts before it knows the key is valid)."""
    presented_hash = _presented_hash(request)
    address = client_ip(request) or "unknown"
    wait = ratelimit.address_blocked(address)
    if wait and not (presented_hash is not None and ratelimit.key_in_use(presented_hash)):
        raise _too_many_failures(wait)
    api_key = hotpath.usable_api_key(presented_hash) if presented_hash is not None else None
    if api_key is None:
        if counted_wait is not None:
            ratelimit.forget_request(presented_hash)
        wait = ratelimit.count_failure(address)
        if wait:
            raise _too_many_failures(wait)
        raise ApiError(
            401,
            "invalid_api_key",
            "A valid API key is required: send the header 'Authorization: Bearer <api key>'. "
            "Create a key on the portal's API keys page.",
            headers={"WWW-Authenticate": 'Bearer realm="katalon-admin"'},
        )
    wait = ratelimit.count_request(presented_hash) if counted_wait is None else counted_wait
    if wait:
        limit = settings.API_RATE_LIMIT
        raise _rate_limited(f"Too many requests for this API key: at most {limit} a minute.", "key", limit, wait)
    actions.touch_api_key(api_key)
    return api_key


def _at_once(request, job):
    """Authenticate and do the request's job in one statement, when it is the common case. `job(key
    hash)` calls an actions.*_at_once function, which returns (answer, key used) having authenticated
    the key and done the job, or None having changed nothing; `job` is None when it is not worth a try.
    Returns (answer, None) when the job was done, else (None, the key authenticated as _authenticate
    does it, raising every refusal) for the general path to decide.

    The request is counted against its key before the statement, since the statement writes: a key
    over its limit does nothing and is answered by _authenticate (401 if it is not valid after all,
    else 429), without being counted twice."""
    presented_hash = _presented_hash(request)
    if (
        job is None
        or presented_hash is None
        or not hotpath.enabled()
        or ratelimit.address_blocked(client_ip(request) or "unknown")
    ):
        return None, _authenticate(request)
    wait = ratelimit.count_request(presented_hash)
    done = None if wait else job(presented_hash)
    if done is None:
        return None, _authenticate(request, counted_wait=wait)
    answer, api_key = done
    actions.touch_api_key(api_key)
    return answer, None


def endpoint(*methods, authenticated=True):
    def decorate(handler):
        @csrf_exempt
        @wraps(handler)
        def view(request, *args, **kwargs):
            request_id = _request_id(request)
            try:
                if request.method not in methods:
                    allowed = ", ".join(methods)
                    raise ApiError(
                        405,
                        "method_not_allowed",
                        f"{request.method[:20]} is not allowed here; use {allowed}.",
                        {"allowed": list(methods)},
                        {"Allow": allowed},
                    )
                if authenticated:
                    request.api_key = _authenticate(request)
                response = handler(request, *args, **kwargs)
            except ApiError as refusal:
                response = error_response(
                    refusal.status, refusal.code, refusal.message, refusal.details, refusal.headers
                )
            except errors.LicenseRefusal as refusal:
                response = error_response(refusal.status, refusal.code, refusal.message, refusal.details)
            except (OperationalError, InterfaceError):
                response = _unavailable()
            except DatabaseError:
                # Anything else the database refuses is a fault on our side, never the engine's to fix;
                # nothing was granted, since the transaction rolled back.
                logger.exception("Database error in the engine API")
                response = _unavailable()
            response["X-Request-ID"] = request_id
            response["Cache-Control"] = "no-store"
            return response

        return view

    return decorate


def _unavailable():
    return error_response(
        503,
        "service_unavailable",
        "The license server cannot reach its database right now; nothing was granted. "
        f"Retry after {RETRY_AFTER_UNAVAILABLE} seconds.",
        headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
    )


def _refuse_json_constant(name):
    # Python's json reads NaN and Infinity, which JSON does not have and no engine sends.
    raise ValueError(f"{name} is not a JSON value")


def _depth(value):
    """How deeply `value` nests arrays and objects, counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _json_body(request):
    try:
        raw = request.body
    except (RequestDataTooBig, OSError) as exc:  # OSError: a client that hung up mid-body
        raise invalid_request({"body": ["The body is too large or could not be read."]}) from exc
    if len(raw) > MAX_BODY_BYTES:
        raise invalid_request({"body": [f"The body must be at most {MAX_BODY_BYTES} bytes."]})
    # A form post (a browser's, say) or any other declared type is not an engine speaking JSON, even
    # when its bytes would parse; the charset parameter is allowed and the body must be UTF-8 anyway.
    if raw and request.content_type.lower() != "application/json":
        raise invalid_request(
            {"Content-Type": ["Send the body as JSON with the header 'Content-Type: application/json'."]},
            "The request body must be JSON.",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_request({"body": ["The body must be UTF-8 encoded JSON."]}) from exc
    try:
        body = json.loads(text, parse_constant=_refuse_json_constant)
    except RecursionError as exc:
        raise invalid_request({"body": [f"The body nests deeper than {MAX_JSON_DEPTH} levels."]}) from exc
    except ValueError as exc:  # not JSON, NaN, or an integer longer than Python converts
        raise invalid_request({"body": [f"The body must be a JSON object; it is not valid JSON ({exc})."]}) from exc
    if not isinstance(body, dict):
        raise invalid_request({"body": ["The body must be a JSON object."]})
    if _depth(body) > MAX_JSON_DEPTH:
        raise invalid_request({"body": [f"The body nests deeper than {MAX_JSON_DEPTH} levels."]})
    return body


def _string(body, name, problems, *, required=False, max_length, pattern=None, alphabet="", choices=None):
    value = body.get(name)
    if value is None:
        if required:
            problems[name] = ["This field is required."]
        return ""
    if not isinstance(value, str):
        problems[name] = ["Must be a string."]
        return ""
    reasons = []
    if choices is not None:
        if value not in choices:
            reasons.append(f"Must be one of: {', '.join(choices)}.")
    else:
        if required and not value:
            reasons.append("Must not be empty.")
        if len(value) > max_length:
            reasons.append(f"At most {max_length} characters.")
        if value and not (pattern or PRINTABLE).fullmatch(value):
            reasons.append(f"Only {alphabet} are allowed." if alphabet else "Control characters are not allowed.")
    if reasons:
        problems[name] = reasons
    return value


def _boolean(body, name, problems):
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        problems[name] = ["Must be true or false (a JSON boolean)."]
        return False
    return value


def _ticket(body, problems):
    value = body.get("ticket")
    if value is None:
        return None
    if not isinstance(value, str) or not TICKET_ID.fullmatch(value):
        problems["ticket"] = ["Must be a ticket id from a 202 answer: q_ followed by 1 to 38 of A-Z a-z 0-9 _ -."]
        return None
    return value


def _max_wait_seconds(body, problems):
    value = body.get("max_wait_seconds")
    if value is None:
        return queue_rules.DEFAULT_MAX_WAIT_SECONDS
    if isinstance(value, bool) or not isinstance(value, int):
        problems["max_wait_seconds"] = ["Must be a whole number of seconds (a JSON integer)."]
    elif not 1 <= value <= queue_rules.MAX_WAIT_SECONDS:
        problems["max_wait_seconds"] = [f"Must be from 1 to {queue_rules.MAX_WAIT_SECONDS:,} seconds."]
    else:
        return value
    return queue_rules.DEFAULT_MAX_WAIT_SECONDS


def _activation_request(body):
    problems = {}
    fields = {
        "product": _string(body, "product", problems, required=True, max_length=3, choices=["KSE", "RE"]),
        "machine_id": _string(
            body,
            "machine_id",
            problems,
            required=True,
            max_length=128,
            pattern=MACHINE_ID,
            alphabet="A-Z a-z 0-9 . _ : -",
        ),
        "org_id": _string(body, "org_id", problems, max_length=64, pattern=ORG_ID, alphabet="A-Z a-z 0-9 . _ -"),
        "hostname": _string(body, "hostname", problems, max_length=255),
        "engine_version": _string(body, "engine_version", problems, max_length=64),
        "release_previous": _boolean(body, "release_previous", problems),
        "ephemeral": _boolean(body, "ephemeral", problems),
        "queue": _boolean(body, "queue", problems),
        "ticket": _ticket(body, problems),
        "max_wait_seconds": _max_wait_seconds(body, problems),
    }
    return fields, problems


def _idempotency_key(request):
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise invalid_request(
            {"Idempotency-Key": ["1 to 255 printable ASCII characters without spaces."]},
            "The Idempotency-Key header is invalid.",
        )
    return key


def activation_body(activation):
    pool, session, machine = activation.pool, activation.session, activation.machine
    return {
        "session": {
            "id": session.public_id,
            "lease_expires_at": iso(session.lease_expires_at),
            "heartbeat_interval_seconds": pool.heartbeat_interval_seconds,
        },
        "organization": {"id": pool.organization.public_id, "name": pool.organization.name},
        "product": pool.product,
        "machine": {"machine_id": machine.machine_id, "registered_at": iso(machine.registered_at)},
        "license": {"expires_at": iso(pool.expires_at)},
        "usage": {
            "sessions": {"used": activation.licenses_used, "quota": pool.quota},
            "machines": {"used": activation.machines_used, "quota": pool.machine_quota},
        },
    }


def queued_body(queued):
    ticket = queued.ticket
    return {
        "queued": {
            "ticket": ticket.public_id,
            "position": queued.position,
            "waiting": queued.waiting,
            "retry_after_seconds": queued.retry_after_seconds,
            "poll_before": iso(ticket.poll_before),
            "expires_at": iso(ticket.expires_at),
        }
    }


def _answer(result):
    """The status and body answering an activation: 201 with the license, or 202 while it waits."""
    if isinstance(result, queue_rules.Queued):
        return 202, queued_body(result)
    return 201, activation_body(result)


def _activation_response(status, body):
    """The answer, fresh or replayed for an Idempotency-Key: a 202 says when to poll in Retry-After too."""
    response = JsonResponse(body, status=status)
    if status == 202:
        response["Retry-After"] = str(body["queued"]["retry_after_seconds"])
    return response


@endpoint("POST")
def activate(request):
    body = _json_body(request)
    fields, problems = _activation_request(body)
    idempotency_key = _idempotency_key(request)
    if problems:
        raise invalid_request(problems)
    api_key = request.api_key

    def decide(on_answer=None):
        try:
            result = actions.activate(
                api_key=api_key,
                user=api_key.user,
                ip_address=client_ip(request),
                on_granted=on_answer,
                on_queued=on_answer,
                **fields,
            )
        except errors.LicenseRefusal as refusal:
            metrics.count_activation(refusal.code)
            raise
        metrics.count_activation("queued" if isinstance(result, queue_rules.Queued) else "granted")
        return result

    if idempotency_key is None:
        result = actions.activate_at_once(api_key=api_key, **fields)
        if result is not None:
            metrics.count_activation("granted")
        else:
            result = decide()
        return _activation_response(*_answer(result))

    # The claim, the decision and the stored answer are one transaction: a duplicate sent meanwhile
    # waits for it and replays its answer, and a request that dies (its worker killed, its database
    # connection cut) takes its claim with it, so the retry is decided afresh, at once.
    refused = None
    with transaction.atomic():
        claim = actions.claim_idempotency_key(
            api_key=api_key, key=idempotency_key, fingerprint=actions.request_fingerprint(body)
        )
        if claim.replay:
            return _activation_response(claim.record.status_code, claim.record.response_body)

        def store(result):
            status, answer = _answer(result)
            actions.complete_idempotency_claim(record=claim.record, status_code=status, body=answer)

        try:
            result = decide(on_answer=store)
        except errors.LicenseRefusal as refusal:
            # The contract: a retry returns the first response, a refusal included. An engine that
            # wants a fresh decision (after a license frees up) sends a new key.
            actions.complete_idempotency_claim(
                record=claim.record,
                status_code=refusal.status,
                body=error_body(refusal.code, refusal.message, refusal.details),
            )
            refused = refusal
    if refused is not None:
        raise refused
    return _activation_response(*_answer(result))


def _session_or_404(session_id):
    if not SESSION_ID.fullmatch(session_id):
        raise errors.SessionNotFound(f"No session {session_id[:64]} of yours exists.")


@endpoint("POST", authenticated=False)
def heartbeat(request, session_id):
    def at_once(key_hash):
        return actions.heartbeat_at_once(key_hash=key_hash, session_id=session_id)

    lease, api_key = _at_once(request, at_once if SESSION_ID.fullmatch(session_id) else None)
    if lease is None:
        _session_or_404(session_id)
        session = actions.heartbeat(user=api_key.user, session_id=session_id, organization=api_key.organization)
        lease = hotpath.Lease(session.public_id, session.lease_expires_at, session.pool.heartbeat_interval_seconds)
    return JsonResponse(
        {
            "session": {
                "id": lease.public_id,
                "lease_expires_at": iso(lease.lease_expires_at),
                "heartbeat_interval_seconds": lease.heartbeat_interval_seconds,
            }
        }
    )


@endpoint("POST", authenticated=False)
def release(request, session_id):
    def at_once(key_hash):
        return actions.release_at_once(key_hash=key_hash, session_id=session_id)

    session, api_key = _at_once(request, at_once if SESSION_ID.fullmatch(session_id) else None)
    if session is None:
        _session_or_404(session_id)
        session = actions.release_session(
            user=api_key.user, session_id=session_id, ip_address=client_ip(request), organization=api_key.organization
        )
    return JsonResponse(
        {"session": {"id": session.public_id, "ended_at": iso(session.ended_at), "end_reason": session.end_reason}}
    )


@endpoint("GET")
def organizations(request):
    api_key = request.api_key
    pools = LicensePool.objects.filter(
        organization__memberships__user=api_key.user, organization__memberships__removed_at__isnull=True
    )
    if api_key.organization_id is not None:
        pools = pools.filter(organization_id=api_key.organization_id)
    by_organization = {}
    for public_id, name, product in pools.order_by(
        "organization__name", "organization__public_id", "product"
    ).values_list("organization__public_id", "organization__name", "product"):
        by_organization.setdefault(public_id, {"id": public_id, "name": name, "products": []})["products"].append(
            product
        )
    return JsonResponse({"organizations": list(by_organization.values())})


@endpoint("GET", authenticated=False)
def public_key(request):
    # Imported here so this module loads before the signing key is needed.
    from licenses.signing import public_key_pem

    pem = public_key_pem()
    if request.get_preferred_type(["application/x-pem-file", "application/json"]) == "application/json":
        return JsonResponse({"algorithm": "ed25519", "public_key_pem": pem})
    return HttpResponse(pem, content_type="application/x-pem-file")


@endpoint("GET", authenticated=False)
def openapi(request):
    return JsonResponse(openapi_document(server_url=request.build_absolute_uri("/").rstrip("/")))


@endpoint("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", authenticated=False)
def not_found(request, path=""):
    raise ApiError(
        404,
        "not_found",
        "No such endpoint. The API is described at /api/v1/openapi.json.",
        {"path": request.path[:200]},
    )
