"""Signed input URLs for the file store: what the daemon hands out and what it accepts.

    <base_url>/inputs/<user_id>/<name>?expires=<unix seconds>&sig=<hex>

`sig` is HMAC-SHA256, under a key only the daemon holds, of `GET`, the object key and
the expiry, one per line. The method is in the message so that a signature for reading
can never be replayed as anything else, should another route ever accept signatures.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

MIN_SIGNING_KEY_BYTES: Final = 32


def check_signing_key(key: bytes) -> bytes:
    """`key` when it is long enough to sign with.

    Raises:
        ValueError: shorter than 32 bytes.
    """
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise ValueError(
            f"signing_key must be at least {MIN_SIGNING_KEY_BYTES} bytes, got {len(key)}"
        )
    return key


def signature(signing_key: bytes, object_key: str, expires: int) -> str:
    message = f"GET\n{object_key}\n{expires}".encode()
    return hmac.new(signing_key, message, hashlib.sha256).hexdigest()


def signature_valid(
    signing_key: bytes, object_key: str, expires: str, sig: str, *, now: float
) -> bool:
    """Whether `sig` signs `object_key` until `expires`, and `expires` is not past.

    Takes the query's strings as they came; anything malformed is simply not valid.
    """
    if not expires.isdecimal() or len(expires) > 12:  # noqa: PLR2004  (year 33658)
        return False
    if now > int(expires):
        return False
    expected = signature(signing_key, object_key, int(expires))
    return hmac.compare_digest(expected.encode(), sig.encode(errors="replace"))
