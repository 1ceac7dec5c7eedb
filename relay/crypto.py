"""Random ids, their hashes, and sealing of the values kept at rest.

Cookies and states are 256-bit random values; the database only sees their SHA-256. Tokens
and PKCE verifiers are sealed with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``)
under keys derived from [session].secret with HKDF. ``MultiFernet`` seals with the current
secret and opens with any of the previous ones, so secrets can be rotated without logging
everyone out.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ID_BYTES = 32
# base64url without padding of 32 bytes is exactly 43 characters.
_ID_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_HKDF_INFO = b"oidc-relay/v1/token-sealing"


def new_id() -> str:
    """A fresh opaque id for a cookie or a state: 256 bits from the OS's CSPRNG."""
    return secrets.token_urlsafe(ID_BYTES)


def looks_like_id(value: str) -> bool:
    return bool(_ID_SHAPE.match(value))


def hash_id(value: str) -> str:
    """What the table stores in place of an id; a leaked table gives no live cookie."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def short_hash(id_hash: str) -> str:
    """How logs name a session: enough to correlate lines, useless as a credential."""
    return id_hash[:12]


class SealError(Exception):
    """A sealed value could not be opened with any configured secret."""


class Sealer:
    def __init__(self, secret: str, previous: list[str] | None = None) -> None:
        keys = [Fernet(_derive_key(s)) for s in [secret, *(previous or [])]]
        self._fernet = MultiFernet(keys)

    def seal(self, value: str | None) -> str | None:
        if value is None:
            return None
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def open(self, sealed: str | None) -> str | None:
        if sealed is None:
            return None
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode("utf-8")
        except InvalidToken as exc:
            raise SealError("sealed value does not open with any configured secret") from exc

    def open_or_absent(self, sealed: str | None) -> str | None:
        """A session's token as the one policy reads it: sealed under a secret no longer
        configured (rotated out of previous_secrets), it reads as absent, and the session goes
        on without it (no token for apps, no logout hint). The two callers that cannot go on
        use ``open`` and say why: a refresh token is forgotten, so that it is never tried
        again (relay/refresh.py), and a pending login started with another secret is a
        misconfiguration between replicas (relay/flows.py)."""
        try:
            return self.open(sealed)
        except SealError:
            return None


def _derive_key(secret: str) -> bytes:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        secret.encode("utf-8")
    )
    return base64.urlsafe_b64encode(key)
