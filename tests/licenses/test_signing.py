import base64
import json
from datetime import timedelta

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.utils import timezone

from licenses import actions, signing
from licenses.models import SigningKey
from tests.concurrency import run_together


@pytest.fixture(autouse=True)
def _fresh_key_cache():
    signing.forget_loaded_keys()
    yield
    signing.forget_loaded_keys()


def make_offline_license(pool, owner):
    return actions.create_offline_license(
        pool=pool, machine_id="lab-01", expires_at=timezone.now() + timedelta(days=7), actor=owner
    )


def test_the_file_verifies_with_the_public_key_and_cryptography_alone(re_pool, owner):
    """Anyone holding the public key PEM can check a file: the contract's format, nothing of ours."""
    document = json.loads(make_offline_license(re_pool, owner).file_content)
    assert document["format"] == "katalon-admin-offline-license/1"
    assert document["algorithm"] == "ed25519"
    public_key = serialization.load_pem_public_key(signing.public_key_pem().encode())
    payload = base64.b64decode(document["payload"])
    public_key.verify(base64.b64decode(document["signature"]), payload)
    assert json.loads(payload)["machine_id"] == "lab-01"


def test_changing_one_byte_of_the_payload_breaks_the_signature(re_pool, owner):
    """A tampered payload fails verification, with cryptography alone and with verify_license_file."""
    document = json.loads(make_offline_license(re_pool, owner).file_content)
    payload = bytearray(base64.b64decode(document["payload"]))
    payload[payload.index(b"lab-01")] ^= 0x01
    public_key = serialization.load_pem_public_key(signing.public_key_pem().encode())
    with pytest.raises(InvalidSignature):
        public_key.verify(base64.b64decode(document["signature"]), bytes(payload))
    document["payload"] = base64.b64encode(bytes(payload)).decode()
    with pytest.raises(ValueError, match="does not verify"):
        signing.verify_license_file(json.dumps(document))


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"format": "other"}',
        '{"format": "katalon-admin-offline-license/1", "algorithm": "ed25519", "payload": "!!", "signature": ""}',
    ],
)
def test_a_malformed_file_is_a_value_error(db, text):
    """Whatever the text, verification answers ValueError, never another exception."""
    with pytest.raises(ValueError):
        signing.verify_license_file(text)


def test_the_key_is_generated_once_and_kept_in_the_database(db):
    """Without LICENSE_SIGNING_KEY a key is generated on first use; later loads use the same one."""
    assert not SigningKey.objects.exists()
    first = signing.public_key_pem()
    signing.forget_loaded_keys()
    assert signing.public_key_pem() == first
    assert SigningKey.objects.count() == 1


def test_a_configured_key_is_used_instead(db, settings):
    """LICENSE_SIGNING_KEY (PEM) signs files, and nothing is generated into the database."""
    key = Ed25519PrivateKey.generate()
    settings.LICENSE_SIGNING_KEY = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    expected = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert signing.public_key_pem() == expected
    assert not SigningKey.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_processes_generating_at_once_end_with_one_key():
    """Eight connections that all find no key and generate one at once agree on a single key."""
    seen = run_together([signing._stored_key_pem] * 8)
    assert len(seen) == 8
    assert len(set(seen)) == 1
    assert SigningKey.objects.count() == 1
