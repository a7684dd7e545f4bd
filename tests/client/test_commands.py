"""The commands for scripts (activate, heartbeat, release, organizations, verify-offline), each
printing the portal's JSON on stdout; and the client on the oldest Python it supports."""

import ast
import base64
import glob
import json
import shutil
import subprocess
from datetime import timedelta

from django.utils import timezone

from licenses import signing
from licenses.actions import create_offline_license
from sessions_app.models import EngineSession

from .conftest import CLIENT_SOURCE, read_report


def test_activate_heartbeat_release_for_scripts(katalon, portal):
    """A script can hold a license by hand: activate prints the session, heartbeat renews it, release
    ends it; a heartbeat after that is refused with the contract's reason and 69."""
    activated = katalon.run("activate", "--machine-id", "build-agent-7")
    assert activated.process.returncode == 0, activated.stderr
    body = json.loads(activated.stdout)
    session_id = body["session"]["id"]
    assert body["organization"] == {"id": portal.organization.public_id, "name": "Acme QA"}
    assert EngineSession.objects.get(public_id=session_id).machine.machine_id == "build-agent-7"

    renewed = katalon.run("heartbeat", session_id)
    assert renewed.process.returncode == 0
    assert json.loads(renewed.stdout)["session"]["heartbeat_interval_seconds"] == 10

    released = katalon.run("release", session_id)
    assert released.process.returncode == 0
    assert json.loads(released.stdout)["session"]["end_reason"] == "released"

    refused = katalon.run("heartbeat", session_id)
    assert refused.process.returncode == 69
    assert refused.stdout == ""
    assert "session_terminated" in refused.stderr


def test_organizations_lists_the_keys_organizations(katalon, portal):
    process = katalon.run("organizations")
    assert process.process.returncode == 0
    assert json.loads(process.stdout) == {
        "organizations": [{"id": portal.organization.public_id, "name": "Acme QA", "products": ["RE"]}]
    }


def offline_license_file(portal, tmp_path):
    offline = create_offline_license(
        pool=portal.pool,
        machine_id="air-gapped-1",
        expires_at=timezone.now() + timedelta(days=30),
        actor=portal.admin,
    )
    path = tmp_path / offline.filename
    path.write_text(offline.file_content)
    return path, offline


def test_verify_offline_checks_the_signature_with_the_portals_key(katalon, portal, tmp_path):
    """A file the portal signed verifies against the key it publishes; a file with one byte of its
    payload changed does not (65)."""
    path, offline = offline_license_file(portal, tmp_path)
    process = katalon.run("verify-offline", path)
    assert process.process.returncode == 0, process.stderr
    result = json.loads(process.stdout)
    assert result["valid"] is True and result["expired"] is False
    assert result["payload"]["license_id"] == offline.license_id
    assert result["payload"]["machine_id"] == "air-gapped-1"

    document = json.loads(path.read_text())
    payload = bytearray(base64.b64decode(document["payload"]))
    payload[payload.index(b"air-gapped-1")] = ord("b")
    document["payload"] = base64.b64encode(bytes(payload)).decode()
    path.write_text(json.dumps(document))
    tampered = katalon.run("verify-offline", path)
    assert tampered.process.returncode == 65
    assert "signature does not verify" in tampered.stderr


def test_verify_offline_with_a_public_key_file_needs_no_portal(katalon, portal, tmp_path):
    """With --public-key the check runs offline; an expired license verifies but exits 69."""
    key_file = tmp_path / "portal.pem"
    key_file.write_text(signing.public_key_pem())
    expired = tmp_path / "RE_old.lic"
    expired.write_text(
        signing.sign_license_file(
            {
                "license_id": "lic_old",
                "organization": {"id": portal.organization.public_id, "name": "Acme QA"},
                "product": "RE",
                "machine_id": "old-machine",
                "issued_at": "2020-01-01T00:00:00Z",
                "expires_at": "2020-12-31T23:59:59Z",
            }
        )
    )
    offline_environment = katalon.environment(KATALON_ADMIN_URL="http://127.0.0.1:9")
    process = katalon.run("verify-offline", expired, "--public-key", key_file, environment=offline_environment)
    assert process.process.returncode == 69
    assert json.loads(process.stdout)["expired"] is True
    assert "expired at 2020-12-31T23:59:59Z" in process.stderr


def test_verify_offline_without_cryptography_says_what_to_install(katalon, portal, tmp_path):
    """The client needs nothing beyond the standard library, except this check: without the
    cryptography package it says how to get it, and exits 78."""
    path, _offline = offline_license_file(portal, tmp_path)
    shadow = tmp_path / "no-cryptography" / "cryptography"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named cryptography')\n")
    environment = katalon.environment(PYTHONPATH=str(shadow.parent))
    process = katalon.run("verify-offline", path, environment=environment)
    assert process.process.returncode == 78
    assert "pip install cryptography" in process.stderr


def python_3_9():
    """A Python 3.9 interpreter, if one is installed (pyenv's, or python3.9 on PATH)."""
    candidates = [*sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9")), shutil.which("python3.9")]
    for candidate in filter(None, candidates):
        try:
            version = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if version == "True":
            return candidate
    return None


def test_the_client_runs_on_python_3_9(katalon, portal):
    """The client supports Python 3.9: its sources parse as 3.9 everywhere, and where a 3.9
    interpreter is installed it runs a command under a license on it, against the portal."""
    sources = sorted(CLIENT_SOURCE.rglob("*.py"))
    assert sources
    for source in sources:
        ast.parse(source.read_text(), filename=str(source), feature_version=(3, 9))

    interpreter = python_3_9()
    if interpreter is None:
        return  # CI images without 3.9 rely on the parse above and ruff's py39 target for client/
    environment = katalon.environment(PYTHONPATH=str(CLIENT_SOURCE))
    argv0 = [interpreter, "-m", "katalon_license"]
    child, report_path = katalon.child()
    process = katalon.run("run", "--verbose", "--", *child, environment=environment, argv0=argv0)
    assert process.process.returncode == 0, process.stderr
    session = EngineSession.objects.get()
    assert read_report(report_path)["env"]["KATALON_LICENSE_SESSION_ID"] == session.public_id
    assert session.end_reason == "released"
    listed = katalon.run("organizations", environment=environment, argv0=argv0)
    assert json.loads(listed.stdout)["organizations"][0]["name"] == "Acme QA"
