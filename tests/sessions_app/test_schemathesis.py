"""schemathesis over the served OpenAPI document, through a real HTTP server (pytest-django's
live_server: the WSGI app on a socket, requests over TCP), with a valid API key on every request.

Every operation is fuzzed with data the document allows (positive) and data it forbids (negative):
no answer is a 5xx, and every answer conforms to the document (status code documented, content type
documented, documented headers present, body valid against its schema).

CI runs the default 500 cases in its PostgreSQL pass (and 100 in the SQLite one); a longer run is
`SCHEMATHESIS_CASES=20000 .venv/bin/python -m pytest tests/sessions_app/test_schemathesis.py`
(docs/RELIABILITY.md)."""

import os
import warnings

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from tests import factories
from tests.reliability import record

CASES = int(os.environ.get("SCHEMATHESIS_CASES", "500"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Share of the cases per operation; the rest go to activate, whose body has the most to vary.
SMALL_SHARE = 0.06


@pytest.fixture
def fuzzed_world(transactional_db, settings):
    """A member of one organization with roomy RE and KSE pools (licensed on KSE), so that valid
    requests are granted, and a live session of theirs for heartbeat and release to find."""
    settings.API_RATE_LIMIT = 1_000_000
    owner = factories.UserFactory()
    organization = factories.OrganizationFactory(owner=owner, name="Fuzzed QA")
    member = factories.MembershipFactory(organization=organization, role="member").user
    re_pool = factories.LicensePoolFactory(organization=organization, product="RE", quota=10_000, machine_quota=10_000)
    kse_pool = factories.LicensePoolFactory(organization=organization, product="KSE", quota=10, machine_quota=10_000)
    factories.LicensedUserFactory(pool=kse_pool, user=member)
    session = factories.EngineSessionFactory(pool=re_pool, user=member)
    key = factories.ApiKeyFactory(user=member)
    return {"key": key.raw_key, "session_id": session.public_id, "org_id": organization.public_id}


def test_every_operation_conforms_to_the_document_under_fuzzing(live_server, fuzzed_world):
    base_url = live_server.url
    # The document as served; loaded from a dict because from_url leaves out the document's own path.
    served = requests.get(f"{base_url}/api/v1/openapi.json", timeout=30)
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(served.json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.label for operation in operations} >= {
        "POST /api/v1/engine/activate",
        "POST /api/v1/engine/sessions/{session_id}/heartbeat",
        "POST /api/v1/engine/sessions/{session_id}/release",
        "GET /api/v1/engine/organizations",
        "GET /api/v1/offline-licenses/public-key",
        "GET /api/v1/openapi.json",
    }
    headers = {"Authorization": f"Bearer {fuzzed_world['key']}"}
    tally = {"cases": 0, "server_errors": 0, "statuses": {}}
    failures = []

    def run(operation, mode, budget, **fixed):
        strategy = operation.as_strategy(generation_mode=mode, **fixed)

        @given(case=strategy)
        @settings(
            max_examples=max(1, budget),
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case):
            response = case.call(base_url=base_url, headers=headers, timeout=30)
            tally["cases"] += 1
            tally["statuses"][response.status_code] = tally["statuses"].get(response.status_code, 0) + 1
            if response.status_code >= 500:
                tally["server_errors"] += 1
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except (AssertionError, FailureGroup) as failure:  # one failed check, or several
                if len(failures) < 20:
                    failures.append(f"{operation.label}: {response.status_code} {case.as_curl_command()}\n{failure}")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fuzz()
            except Unsatisfiable:
                # Nothing to make invalid: an operation without parameters or body has no negative cases.
                assert mode == GenerationMode.NEGATIVE, operation.label

    small = max(1, int(CASES * SMALL_SHARE))
    for operation in operations:
        share = small if operation.label != "POST /api/v1/engine/activate" else None
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if share is None:
                continue
            run(operation, mode, share // 2)
        if "{session_id}" in operation.path:
            # The member's own live session too, not only ids that do not exist.
            run(
                operation,
                GenerationMode.POSITIVE,
                share // 2,
                path_parameters={"session_id": fuzzed_world["session_id"]},
            )
    activate = schema["/api/v1/engine/activate"]["POST"]
    remaining = max(CASES - tally["cases"], 2)
    run(activate, GenerationMode.POSITIVE, remaining // 2)
    run(activate, GenerationMode.NEGATIVE, remaining - remaining // 2)

    record(
        "schemathesis over the engine API (live HTTP server, valid key)",
        operations=len(operations),
        cases=tally["cases"],
        server_errors=tally["server_errors"],
        nonconforming=len(failures),
        statuses=" ".join(f"{status}x{count}" for status, count in sorted(tally["statuses"].items())),
    )
    assert failures == [], "\n\n".join(failures)
    assert tally["server_errors"] == 0
    assert tally["cases"] >= CASES * 0.9, tally
    # The fuzzing reached both granted and refused answers, not only one kind.
    assert any(200 <= status < 300 for status in tally["statuses"])
    assert any(400 <= status < 500 for status in tally["statuses"])
