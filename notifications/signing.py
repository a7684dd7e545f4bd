"""Webhook signing secrets and signatures, as the Standard Webhooks 1.0 specification says.

Signatures are made with the `standardwebhooks` package (the specification's own Python library),
so what receivers verify with any of its libraries is by construction what we sign. Secrets are
`whsec_` + base64 of 32 random bytes; the database holds them encrypted (Fernet, keyed from
SECRET_KEY and SECRET_KEY_FALLBACKS), since signing needs them in the clear and they cannot be hashed."""

import base64
import secrets
from datetime import timedelta
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# After a roll the old secret keeps working this long, so receivers can switch without a gap.
ROLL_OVERLAP = timedelta(hours=24)


def generate_secret():
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def headers(*, message_id, timestamp, body, signing_secrets):
    """The three headers of one attempt: `body` is the exact bytes sent (str), `timestamp` the
    attempt's time, and there is one `v1,` signature per valid secret, space-separated."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(
            Webhook(secret).sign(msg_id=message_id, timestamp=timestamp, data=body) for secret in signing_secrets
        ),
    }


class SecretUnreadable(Exception):
    """The secret was encrypted under a SECRET_KEY that is neither the current one nor a fallback."""


def encrypt(secret):
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(token):
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as error:
        raise SecretUnreadable(
            "This endpoint's signing secret was saved under another SECRET_KEY; roll the secret."
        ) from error


@cache
def _fernets(keys):
    return MultiFernet([Fernet(_derive(key)) for key in keys])


def _fernet():
    return _fernets((settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])))


def _derive(secret_key):
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"katalon-admin webhook signing secrets").derive(
        secret_key.encode()
    )
    return base64.urlsafe_b64encode(key)
