"""`verify-offline`: checks an offline license file (contract/engine-api.md, "Offline license files")
against the portal's Ed25519 public key. Ed25519 needs the optional `cryptography` package; the rest
of the client runs on the standard library alone."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timezone

from .errors import EX_CONFIG, EX_DATAERR, ClientError
from .portal import parse_time

FORMAT = "katalon-admin-offline-license/1"
ALGORITHM = "ed25519"


class InvalidLicenseFile(ClientError):
    exit_code = EX_DATAERR
    code = "invalid_license_file"


class MissingCryptography(ClientError):
    exit_code = EX_CONFIG
    code = "missing_dependency"


def require_cryptography() -> None:
    try:
        import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
    except ImportError:
        raise MissingCryptography(
            "verify-offline needs the 'cryptography' package to check Ed25519 signatures: "
            "pip install cryptography (or install the client as katalon-license[verify])"
        ) from None


def load_public_key(pem: bytes):
    require_cryptography()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as error:
        raise InvalidLicenseFile(f"the public key is not a PEM public key ({error})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidLicenseFile("the public key is not an Ed25519 key")
    return key


def verify(document_text: str, public_key_pem: bytes) -> dict:
    """The result printed by verify-offline: the payload when the signature verifies, and whether it
    has expired. InvalidLicenseFile when the file is malformed or the signature does not verify."""
    key = load_public_key(public_key_pem)
    from cryptography.exceptions import InvalidSignature

    try:
        document = json.loads(document_text)
    except ValueError:
        raise InvalidLicenseFile("the file is not JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InvalidLicenseFile(f"the file is not an offline license ({FORMAT})")
    if document.get("algorithm") != ALGORITHM:
        raise InvalidLicenseFile(f"unknown signature algorithm {str(document.get('algorithm'))[:40]!r}")
    try:
        payload_bytes = base64.b64decode(document["payload"], validate=True)
        signature = base64.b64decode(document["signature"], validate=True)
    except (KeyError, TypeError, binascii.Error):
        raise InvalidLicenseFile("the payload or signature is not base64") from None
    try:
        key.verify(signature, payload_bytes)
    except InvalidSignature:
        raise InvalidLicenseFile(
            "the signature does not verify: the file was changed or not signed by this portal"
        ) from None
    try:
        payload = json.loads(payload_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidLicenseFile("the signed payload is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidLicenseFile("the signed payload is not a JSON object")
    try:
        expired = parse_time(str(payload["expires_at"])) <= datetime.now(timezone.utc)
    except (KeyError, ValueError):
        raise InvalidLicenseFile("the signed payload has no valid expires_at") from None
    return {"valid": True, "expired": expired, "payload": payload}
