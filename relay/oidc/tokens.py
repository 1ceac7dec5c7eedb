"""ID token validation, OpenID Connect Core 1.0 §3.1.3.7, in two steps as joserfc draws them:
verify (signature with a provider key, explicit algorithms), then validate (the claims).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    JoseError,
    SecurityWarning,
)
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry

from relay.errors import BadRequest
from relay.oidc.jwks import JwksCache


@dataclass(frozen=True)
class Expectations:
    issuer: str
    client_id: str
    trusted_audiences: Collection[str]
    nonce: str
    algorithms: Collection[str]
    jwks_uri: str
    now: int
    skew: int


class InvalidIdToken(BadRequest):
    """The ID token failed a check; ``reason`` names the rule (id_token.<rule>)."""


async def validate_id_token(token: str, keys: JwksCache, expect: Expectations) -> dict[str, Any]:
    header = _header(token)
    alg = header.get("alg")
    # §3.1.3.7 (6)/(7): only asymmetric algorithms the provider advertises and we allow; this is
    # what stops "none" and HS256-signed-with-the-public-key confusion before any key is used.
    if not isinstance(alg, str) or alg not in expect.algorithms:
        raise InvalidIdToken("id_token.alg_not_allowed", str(alg)[:32])
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidIdToken("id_token.bad_kid")
    candidates = await keys.candidates(expect.jwks_uri, kid)
    if not candidates:
        raise InvalidIdToken("id_token.unknown_kid", str(kid)[:64])
    claims = _verify(token, candidates, alg)
    _validate_claims(claims, expect)
    return claims


def _header(token: str) -> dict[str, Any]:
    if not isinstance(token, str) or token.count(".") != 2:
        raise InvalidIdToken("id_token.malformed")
    try:
        return dict(jws.extract_compact(token.encode("ascii")).headers())
    except (JoseError, ValueError, UnicodeError) as exc:
        raise InvalidIdToken("id_token.malformed", type(exc).__name__) from exc


def _verify(token: str, candidates: list[Key], alg: str) -> dict[str, Any]:
    # §3.1.3.7 (6): the signature must verify with one of the provider's keys; without a kid
    # every signing key of the provider is a candidate.
    registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
    for key in candidates:
        try:
            with warnings.catch_warnings():
                # joserfc flags "EdDSA" as superseded by RFC 9864's "Ed25519"; providers still
                # publish it, and accepting it is a choice made in config (allowed_algorithms).
                warnings.simplefilter("ignore", SecurityWarning)
                return dict(jwt.decode(token, key, algorithms=[alg], registry=registry).claims)
        except BadSignatureError:
            continue
        except JoseError as exc:  # wrong key type for alg, bad header, bad payload
            if len(candidates) == 1:
                raise InvalidIdToken("id_token.unverifiable", type(exc).__name__) from exc
            continue
    raise InvalidIdToken("id_token.bad_signature")


def _validate_claims(claims: dict[str, Any], expect: Expectations) -> None:
    # (2) iss must match exactly.
    if claims.get("iss") != expect.issuer:
        raise InvalidIdToken("id_token.iss_mismatch")
    # OIDC Core §2: sub is required, a string of at most 255 ASCII characters.
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise InvalidIdToken("id_token.bad_sub")
    # (3) aud must contain our client_id and no audience we do not trust.
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or expect.client_id not in audiences:
        raise InvalidIdToken("id_token.aud_mismatch")
    trusted = {expect.client_id, *expect.trusted_audiences}
    if any(a not in trusted for a in audiences):
        raise InvalidIdToken("id_token.untrusted_audience")
    # (4) with several audiences, azp must be there; (5) when there, it must be our client_id.
    if len(audiences) > 1 and "azp" not in claims:
        raise InvalidIdToken("id_token.azp_missing")
    if "azp" in claims and claims["azp"] != expect.client_id:
        raise InvalidIdToken("id_token.azp_mismatch")
    # (9) exp in the future, (10) iat not in the future; both within the allowed skew.
    registry = jwt.JWTClaimsRegistry(
        now=expect.now,
        leeway=expect.skew,
        exp={"essential": True},
        iat={"essential": True},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError as exc:
        raise InvalidIdToken("id_token.expired") from exc
    except ClaimError as exc:
        raise InvalidIdToken(f"id_token.bad_{exc.claim}") from exc
    # (11) nonce must equal the one we sent.
    if claims.get("nonce") != expect.nonce:
        raise InvalidIdToken("id_token.nonce_mismatch")
