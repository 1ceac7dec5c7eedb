"""The relay's own signing key for private_key_jwt (relay/oidc/client_auth.py): read from a
PEM file, and the JWS algorithm that goes with it. A leaf: the config checks a key with it."""

from __future__ import annotations

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

# RFC 7518 §3.1 / RFC 8037 §3.1: one algorithm per key type, the one every provider takes.
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def load_key(pem: bytes, *, private: bool = True) -> Key:
    """An RSA, EC or Ed25519 key from PEM, private unless ``private`` is False (a key only
    published); ValueError saying why not."""
    for kind in (RSAKey, ECKey, OKPKey):
        try:
            key: Key = kind.import_key(pem)
        except (JoseError, ValueError, TypeError):
            continue
        if private and not key.is_private:
            raise ValueError("holds a public key: the relay signs with the private key")
        return key
    raise ValueError("is not a PEM key (RSA, EC P-256/384/521 or Ed25519)")


def algorithm(key: Key) -> str:
    if isinstance(key, RSAKey):
        return "RS256"
    if isinstance(key, ECKey):
        curve = str(key.get("crv"))
        if curve not in _EC_ALGORITHMS:
            raise ValueError(f"EC curve {curve} is not one of {sorted(_EC_ALGORITHMS)}")
        return _EC_ALGORITHMS[curve]
    if key.get("crv") != "Ed25519":
        raise ValueError("an OKP key must be Ed25519")
    return "EdDSA"
