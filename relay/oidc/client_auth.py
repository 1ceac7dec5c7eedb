"""How the relay proves it is its client at the provider's endpoints for clients (token,
introspection, revocation, pushed authorization): a shared secret (RFC 6749 §2.3.1, Basic or
in the form), or a JWT signed with the relay's own private key (RFC 7523 §2.2, OIDC Core §9
``private_key_jwt``), so that no secret is shared with the provider at all.

The private key is read from its PEM file, and read again when the file changes: a new key is
put in place without a restart of the relay. Its public half is published as a JWKS at
``<public_url>/jwks.json`` (with its ``kid``), which the provider fetches from the client's
registered ``jwks_uri``; a provider that meets an assertion with a kid it has not seen fetches
the set again, so neither side restarts for a rotation.
"""

from __future__ import annotations

import base64
import functools
import os
import secrets
import time
from typing import Any
from urllib.parse import quote

from joserfc import jwt
from joserfc.jwk import Key

from relay.config import ProviderConfig
from relay.errors import Misconfigured
from relay.oidc.keys import algorithm, load_key

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60  # seconds: one request's worth (RFC 7523 §3 (4) exp)


def authenticate(
    provider: ProviderConfig, endpoint: str, form: dict[str, str], headers: dict[str, str]
) -> None:
    """Add the client's authentication to a request to ``endpoint``."""
    method = provider.token_endpoint_auth_method
    secret = provider.client_secret.get_secret_value() if provider.client_secret else ""
    if method == "client_secret_basic":
        # RFC 6749 §2.3.1: both parts are form-urlencoded before the Basic encoding.
        pair = f"{quote(provider.client_id, safe='')}:{quote(secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return
    form["client_id"] = provider.client_id
    if method == "client_secret_post":
        form["client_secret"] = secret
    elif method == "private_key_jwt":
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = client_assertion(provider, endpoint, int(time.time()))


def client_assertion(provider: ProviderConfig, audience: str, now: int) -> str:
    """RFC 7523 §3: iss and sub the client id, aud the endpoint it is sent to (§3 (3) names
    the token endpoint; each endpoint for clients accepts its own URL), a short exp and a
    fresh jti (OIDC Core §9, which the provider may use to refuse a replay). Wall-clock
    time: the provider judges it by its own."""
    key, kid, alg = signing_key(provider)
    claims = {
        "iss": provider.client_id,
        "sub": provider.client_id,
        "aud": audience,
        "jti": secrets.token_urlsafe(24),
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
    }
    return jwt.encode({"alg": alg, "kid": kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def published_keys(provider: ProviderConfig) -> list[dict[str, Any]]:
    """The public keys the provider fetches to check the relay's assertions: the signing key,
    then ``published_key_files`` (the next or the previous one); [] without private_key_jwt."""
    if provider.token_endpoint_auth_method != "private_key_jwt":
        return []
    keys = [signing_key(provider)]
    keys.extend(_read(path, None, private=False) for path in provider.published_key_files)
    published, kids = [], set()
    for key, kid, alg in keys:
        if kid not in kids:  # the next key may already be the signing one
            kids.add(kid)
            published.append({**key.as_dict(private=False), "kid": kid, "use": "sig", "alg": alg})
    return published


def signing_key(provider: ProviderConfig) -> tuple[Key, str, str]:
    """The current private key, its kid and its algorithm; read again when the file's
    modification time changes."""
    if provider.private_key_file is None:
        raise Misconfigured("client_auth.no_private_key", "provider.private_key_file is not set")
    return _read(provider.private_key_file, provider.private_key_id, private=True)


def _read(path: str, kid: str | None, *, private: bool) -> tuple[Key, str, str]:
    try:
        return _load(path, os.stat(path).st_mtime_ns, kid, private)
    except OSError as exc:
        problem = f"cannot be read: {exc.strerror}"
    except ValueError as exc:
        problem = str(exc)
    # Checked at startup; this is a file replaced since by one that is not a key (a rotation
    # half done): nothing can be signed or published until it is put right.
    raise Misconfigured("client_auth.key_unusable", f"provider key file {path} {problem}")


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, kid: str | None, private: bool) -> tuple[Key, str, str]:
    with open(path, "rb") as handle:
        key = load_key(handle.read(), private=private)
    # RFC 7638: the thumbprint names the key unless the operator chose a kid.
    return key, kid or key.thumbprint(), algorithm(key)
