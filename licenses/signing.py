"""Offline license files, signed with Ed25519 as contract/engine-api.md "Offline license files" states.

The key is settings.LICENSE_SIGNING_KEY (PEM) when configured; otherwise one is generated into the
database on first use and shared by every process. Each process parses its key once."""

import base64
import binascii
import json
import threading
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

from .models import SigningKey

FORMAT = "katalon-admin-offline-license/1"
ALGORITHM = "ed25519"

_loaded_keys: dict[str, Ed25519PrivateKey] = {}
_loading = threading.Lock()


def _generate_pem() -> str:
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )


def _stored_key_pem() -> str:
    pem = SigningKey.objects.values_list("private_key_pem", flat=True).first()
    if pem:
        return pem
    # Two processes may both find no key: both insert the single slot, the database keeps the
    # first, and both read back that one.
    SigningKey.objects.bulk_create([SigningKey(private_key_pem=_generate_pem())], ignore_conflicts=True)
    return SigningKey.objects.values_list("private_key_pem", flat=True).get()


def _load_private_key(pem: str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("LICENSE_SIGNING_KEY must be an Ed25519 private key in PEM.")
    return key


def private_key() -> Ed25519PrivateKey:
    configured = settings.LICENSE_SIGNING_KEY.strip()
    key = _loaded_keys.get(configured)
    if key is not None:
        return key
    with _loading:
        key = _loaded_keys.get(configured)
        if key is None:
            key = _load_private_key(configured or _stored_key_pem())
            _loaded_keys[configured] = key
        return key


def forget_loaded_keys() -> None:
    """Drop the per-process cache, so the next use reads the configured or stored key again."""
    with _loading:
        _loaded_keys.clear()


def public_key() -> Ed25519PublicKey:
    return private_key().public_key()


def public_key_pem() -> str:
    return (
        public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    )


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_license_file(payload: dict) -> str:
    """The .lic file for `payload`: UTF-8 JSON whose signature covers the payload's exact bytes."""
    payload_bytes = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    signature = private_key().sign(payload_bytes)
    document = {
        "format": FORMAT,
        "algorithm": ALGORITHM,
        "payload": base64.b64encode(payload_bytes).decode(),
        "signature": base64.b64encode(signature).decode(),
    }
    return json.dumps(document, indent=2) + "\n"


def verify_license_file(text: str) -> dict:
    """The payload of a license file this portal signed; ValueError when it is malformed or the
    signature does not verify."""
    try:
        document = json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError("The license file is not JSON.") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("algorithm") != ALGORITHM:
        raise ValueError(f"The license file is not in the {FORMAT} format.")
    try:
        payload_bytes = base64.b64decode(document["payload"], validate=True)
        signature = base64.b64decode(document["signature"], validate=True)
    except (KeyError, TypeError, binascii.Error) as error:
        raise ValueError("The license file's payload or signature is not base64.") from error
    try:
        public_key().verify(signature, payload_bytes)
    except InvalidSignature as error:
        raise ValueError("The license file's signature does not verify.") from error
    try:
        payload = json.loads(payload_bytes.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError("The license file's payload is not JSON.") from error
    if not isinstance(payload, dict):
        raise ValueError("The license file's payload is not a JSON object.")
    return payload
