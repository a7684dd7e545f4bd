"""The OpenAPI 3.1 description of the engine API (contract/engine-api.md), served at
/api/v1/openapi.json. The suite checks real answers against these schemas, so they cannot drift."""

ERROR_CODES = {
    400: ["invalid_request"],
    401: ["invalid_api_key"],
    403: ["not_licensed", "license_expired", "machine_not_allowed"],
    404: ["organization_not_found", "no_license_pool", "session_not_found", "ticket_not_found", "not_found"],
    405: ["method_not_allowed"],
    409: ["organization_required", "session_quota_exceeded", "machine_quota_exceeded", "idempotency_key_in_use"],
    410: ["session_terminated"],
    422: ["idempotency_key_reused"],
    429: ["rate_limited"],
    503: ["service_unavailable"],
}

ERROR_DESCRIPTIONS = {
    400: "The body is not a JSON object, or a field is missing, of the wrong type, too long or outside its "
    "alphabet; `details.fields` maps each bad field to its reasons.",
    401: "The Authorization header is missing or malformed, or the key is unknown, revoked or expired.",
    403: "`not_licensed`: not a licensed user of the KSE pool. `license_expired`: the subscription has ended or "
    "not started. `machine_not_allowed`: the machine id is not on the pool's allow-list.",
    404: "`organization_not_found`, `no_license_pool` or `session_not_found`; `ticket_not_found` when a polled queue "
    "ticket is unknown, another request's, used up, ended, removed by an admin or was not polled before its "
    "`poll_before` (activate afresh); `not_found` for an unknown path.",
    405: "The path exists but not with this method; the Allow header lists the methods.",
    409: "`organization_required` (`details.organizations` lists the choices), `session_quota_exceeded` "
    "(details: SessionQuotaDetails; no license is free, or engines wait in the pool's queue and this request did "
    "not ask to queue, or a queued wait passed its `max_wait_seconds`), `machine_quota_exceeded`, or "
    "`idempotency_key_in_use` while a request with the same key runs.",
    410: "The session has ended; `details.reason` says why. The engine activates again.",
    422: "The Idempotency-Key came before with a different body.",
    429: "Too many requests for this API key, or too many failed authentications from this address; retry after "
    "`Retry-After` seconds.",
    503: "The database cannot be reached; nothing was granted. Retry after `Retry-After` seconds.",
}

END_REASONS = [
    "released",
    "expired",
    "withdrawn",
    "machine_deactivated",
    "member_removed",
    "signed_in_elsewhere",
    "license_expired",
    "quota_reduced",
]

TIMESTAMP = {"type": "string", "format": "date-time", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"}
SESSION_ID = {"type": "string", "pattern": r"^s_[A-Za-z0-9_\-]+$"}
TICKET_ID = {"type": "string", "pattern": r"^q_[A-Za-z0-9_\-]{1,38}$"}
# Free text the server takes excludes control characters (api.PRINTABLE).
PRINTABLE = r"^[^\u0000-\u001f\u007f]*$"
REQUEST_ID_HEADER = {
    "description": "Echoes a sane incoming X-Request-ID, or a new one.",
    "schema": {"type": "string"},
}
RETRY_AFTER_HEADER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {
                        "type": "string",
                        "enum": sorted({code for codes in ERROR_CODES.values() for code in codes}),
                    },
                    "message": {"type": "string", "minLength": 1},
                    "details": {"type": "object"},
                },
            }
        },
    },
    "ActivateRequest": {
        "type": "object",
        "required": ["product", "machine_id"],
        "properties": {
            "product": {"type": "string", "enum": ["KSE", "RE"]},
            "machine_id": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"^[A-Za-z0-9._:\-]+$"},
            "org_id": {
                "type": ["string", "null"],
                "maxLength": 64,
                "pattern": r"^[A-Za-z0-9._\-]*$",
                "description": "The organization the activation counts against (-orgID). Needed when the user "
                "belongs to several organizations with a pool for the product.",
            },
            "hostname": {"type": ["string", "null"], "maxLength": 255, "pattern": PRINTABLE},
            "engine_version": {"type": ["string", "null"], "maxLength": 64, "pattern": PRINTABLE},
            "release_previous": {
                "type": ["boolean", "null"],
                "default": False,
                "description": "First end this user's live sessions of the product on this machine (reason released).",
            },
            "ephemeral": {
                "type": ["boolean", "null"],
                "default": False,
                "description": "Deregister the machine as soon as its last session ends.",
            },
            "queue": {
                "type": ["boolean", "null"],
                "default": False,
                "description": "RE only (KSE answers as without it): when only the session quota stands in the way "
                "(organization, subscription, allow-list and machine quota are checked first), wait in the pool's "
                "first-come-first-served line: the answer is 202 with a ticket.",
            },
            "ticket": {
                **TICKET_ID,
                "type": ["string", "null"],
                "description": "When polling: the ticket of the 202 answer. The poll must otherwise be the same "
                "request (user, product, organization and machine_id; hostname and engine_version may change), "
                "sent after `retry_after_seconds` and before `poll_before`.",
            },
            "max_wait_seconds": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": 86400,
                "default": 1800,
                "description": "With queue: how long to wait at most; the ticket's expires_at is the joining time "
                "plus this.",
            },
        },
    },
    "Queued": {
        "type": "object",
        "required": ["queued"],
        "properties": {
            "queued": {
                "type": "object",
                "required": ["ticket", "position", "waiting", "retry_after_seconds", "poll_before", "expires_at"],
                "properties": {
                    "ticket": TICKET_ID,
                    "position": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "1 for the oldest waiting ticket; counts every ticket still waiting ahead.",
                    },
                    "waiting": {"type": "integer", "minimum": 1, "description": "Tickets waiting in the pool."},
                    "retry_after_seconds": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "When to poll next (also the Retry-After header): about 2 s at the head of "
                        "the line, longer further back, at most 30 s.",
                    },
                    "poll_before": {
                        **TIMESTAMP,
                        "description": "The ticket is dropped unless polled before this: the answer's time + "
                        "retry_after_seconds + 30 s. A 429 or 503 answer does not move it.",
                    },
                    "expires_at": {
                        **TIMESTAMP,
                        "description": "Joining time + max_wait_seconds; a poll after it answers 409.",
                    },
                },
            }
        },
    },
    "SessionQuotaDetails": {
        "type": "object",
        "description": "`details` of session_quota_exceeded.",
        "required": ["quota", "live_sessions", "offline_licenses", "waiting"],
        "properties": {
            "quota": {"type": "integer", "minimum": 0},
            "live_sessions": {"type": "integer", "minimum": 0},
            "offline_licenses": {"type": "integer", "minimum": 0},
            "waiting": {
                "type": "integer",
                "minimum": 0,
                "description": "Tickets waiting in the pool's line; free licenses are set aside for them.",
            },
            "waited_seconds": {
                "type": "integer",
                "minimum": 0,
                "description": "Only when a queued wait passed its max_wait_seconds: how long it waited.",
            },
        },
    },
    "Session": {
        "type": "object",
        "required": ["id", "lease_expires_at", "heartbeat_interval_seconds"],
        "properties": {
            "id": SESSION_ID,
            "lease_expires_at": TIMESTAMP,
            "heartbeat_interval_seconds": {"type": "integer", "minimum": 1},
        },
    },
    "Figure": {
        "type": "object",
        "required": ["used", "quota"],
        "properties": {"used": {"type": "integer", "minimum": 0}, "quota": {"type": "integer", "minimum": 0}},
    },
    "Activation": {
        "type": "object",
        "required": ["session", "organization", "product", "machine", "license", "usage"],
        "properties": {
            "session": {"$ref": "#/components/schemas/Session"},
            "organization": {
                "type": "object",
                "required": ["id", "name"],
                "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
            },
            "product": {"type": "string", "enum": ["KSE", "RE"]},
            "machine": {
                "type": "object",
                "required": ["machine_id", "registered_at"],
                "properties": {"machine_id": {"type": "string"}, "registered_at": TIMESTAMP},
            },
            "license": {"type": "object", "required": ["expires_at"], "properties": {"expires_at": TIMESTAMP}},
            "usage": {
                "type": "object",
                "required": ["sessions", "machines"],
                "properties": {
                    "sessions": {
                        "$ref": "#/components/schemas/Figure",
                        "description": "Licenses in use against the quota, this session included: RE live "
                        "sessions, KSE licensed users, each plus unexpired offline licenses.",
                    },
                    "machines": {"$ref": "#/components/schemas/Figure"},
                },
            },
        },
    },
    "Heartbeat": {
        "type": "object",
        "required": ["session"],
        "properties": {"session": {"$ref": "#/components/schemas/Session"}},
    },
    "Release": {
        "type": "object",
        "required": ["session"],
        "properties": {
            "session": {
                "type": "object",
                "required": ["id", "ended_at", "end_reason"],
                "properties": {
                    "id": SESSION_ID,
                    "ended_at": TIMESTAMP,
                    "end_reason": {"type": "string", "enum": END_REASONS},
                },
            }
        },
    },
    "Organizations": {
        "type": "object",
        "required": ["organizations"],
        "properties": {
            "organizations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "name", "products"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "products": {"type": "array", "items": {"type": "string", "enum": ["KSE", "RE"]}},
                    },
                },
            }
        },
    },
    "PublicKey": {
        "type": "object",
        "required": ["algorithm", "public_key_pem"],
        "properties": {
            "algorithm": {"type": "string", "const": "ed25519"},
            "public_key_pem": {"type": "string", "pattern": "^-----BEGIN PUBLIC KEY-----"},
        },
    },
}


def _error_responses(*statuses):
    responses = {}
    for status in statuses:
        headers = {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}
        if status in (429, 503):
            headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS[status],
            "headers": headers,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return responses


def _ok(status, description, schema_name):
    return {
        str(status): {
            "description": description,
            "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}},
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
        }
    }


SESSION_PARAMETER = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}

PATHS = {
    "/api/v1/engine/activate": {
        "post": {
            "operationId": "activate",
            "summary": "Take one online license for one engine process.",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "A retry with the same key and body, sent with the same API key, returns the "
                    "first answer, a refusal included, and takes nothing more, for at least 24 hours; send a new "
                    "key for a fresh decision. A request with another API key is decided afresh. A 503 is not "
                    "stored: its retry is served.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ActivateRequest"}}},
            },
            "responses": {
                **_ok(201, "The license is taken; keep it with heartbeats.", "Activation"),
                "202": {
                    "description": "With queue: no license is free for this request yet, and it waits in the pool's "
                    "line. Poll with the ticket after retry_after_seconds (the Retry-After header).",
                    "headers": {
                        "X-Request-ID": {"$ref": "#/components/headers/RequestId"},
                        "Retry-After": {"$ref": "#/components/headers/RetryAfter"},
                    },
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Queued"}}},
                },
                **_error_responses(400, 401, 403, 404, 405, 409, 422, 429, 503),
            },
        }
    },
    "/api/v1/engine/sessions/{session_id}/heartbeat": {
        "post": {
            "operationId": "heartbeat",
            "summary": "Extend the session's lease by the pool's lease length (database clock).",
            "parameters": [SESSION_PARAMETER],
            "responses": {
                **_ok(200, "The lease is extended.", "Heartbeat"),
                **_error_responses(401, 404, 405, 410, 429, 503),
            },
        }
    },
    "/api/v1/engine/sessions/{session_id}/release": {
        "post": {
            "operationId": "release",
            "summary": "End the session (reason released) and free its license at once. Idempotent.",
            "parameters": [SESSION_PARAMETER],
            "responses": {
                **_ok(200, "The session has ended (now or before).", "Release"),
                **_error_responses(401, 404, 405, 429, 503),
            },
        }
    },
    "/api/v1/engine/organizations": {
        "get": {
            "operationId": "organizations",
            "summary": "The key user's organizations that hold a pool, for choosing -orgID.",
            "responses": {
                **_ok(200, "The organizations.", "Organizations"),
                **_error_responses(401, 405, 429, 503),
            },
        }
    },
    "/api/v1/offline-licenses/public-key": {
        "get": {
            "operationId": "publicKey",
            "summary": "The Ed25519 public key that verifies offline license files.",
            "security": [],
            "responses": {
                "200": {
                    "description": "PEM, or JSON when the Accept header asks for application/json.",
                    "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}},
                    "content": {
                        "application/x-pem-file": {"schema": {"type": "string"}},
                        "application/json": {"schema": {"$ref": "#/components/schemas/PublicKey"}},
                    },
                },
                **_error_responses(405, 503),
            },
        }
    },
    "/api/v1/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document.",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document.",
                    "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}},
                    "content": {"application/json": {"schema": {"type": "object", "required": ["openapi"]}}},
                },
                **_error_responses(405, 503),
            },
        }
    },
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "Katalon Admin engine API",
        "version": "1",
        "description": "How Katalon Studio Enterprise and Runtime Engine processes activate, keep and release "
        "online licenses. Times are ISO 8601 UTC with a Z suffix; every error has the Error body.",
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "headers": {"RequestId": REQUEST_ID_HEADER, "RetryAfter": RETRY_AFTER_HEADER},
        "securitySchemes": {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key from the portal's API keys page: Authorization: Bearer kat_…",
            }
        },
    },
    "security": [{"apiKey": []}],
}


def openapi_document(*, server_url: str) -> dict:
    # A shallow copy: the shared parts are only ever serialised, never changed.
    return {**DOCUMENT, "servers": [{"url": server_url or "/"}]}
