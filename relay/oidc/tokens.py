"""ID token validation, OpenID Connect Core 1.0 §3.1.3.7, in two steps as joserfc draws them:
verify (signature with a provider key, explicit algorithms), then validate (the claims).
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Collection, Mapping
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

from relay.config import TENANT, ProviderConfig
from relay.errors import BadRequest
from relay.oidc.discovery import ProviderMetadata
from relay.oidc.jwks import JwksCache


@dataclass(frozen=True)
class Expectations:
    issuer: str
    client_id: str
    trusted_audiences: Collection[str]
    algorithms: Collection[str]
    jwks_uri: str
    now: int
    skew: int
    nonce: str | None = None  # the ID token's; a logout token must have none
    tenants: Collection[str] = ()  # with a {tenantid} issuer: whose tokens are accepted
    max_age: int | None = None  # the login asked for max_age (OIDC Core 3.1.2.1)
    acr_values: tuple[str, ...] = ()  # a step-up asked for one of these (3.1.2.1)


def expectations(
    metadata: ProviderMetadata, provider: ProviderConfig, now: int, nonce: str | None
) -> Expectations:
    """What a token from this provider must satisfy for this client, now."""
    return Expectations(
        issuer=metadata.issuer,
        client_id=provider.client_id,
        trusted_audiences=provider.trusted_audiences,
        algorithms=[a for a in metadata.signing_algorithms if a in provider.allowed_algorithms],
        jwks_uri=metadata.jwks_uri,
        now=now,
        skew=provider.clock_skew,
        nonce=nonce,
        max_age=provider.max_age,
        tenants=provider.tenants,
    )


class InvalidToken(BadRequest):
    """A token failed a check; ``reason`` names the token and the rule (id_token.<rule>)."""


BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


async def validate_id_token(token: str, keys: JwksCache, expect: Expectations) -> dict[str, Any]:
    """OpenID Connect Core 1.0 §3.1.3.7."""
    claims = await _verified_claims(token, keys, expect, "id_token")
    _validate_common(claims, expect, "id_token")
    # OIDC Core §2: sub is required, a string of at most 255 ASCII characters.
    if not is_subject(claims.get("sub")):
        raise InvalidToken("id_token.bad_sub")
    # (11) nonce must equal the one we sent.
    if claims.get("nonce") != expect.nonce:
        raise InvalidToken("id_token.nonce_mismatch")
    # (12) acr asked for by a step-up: the provider must say it authenticated so (the
    # config's acr_values are voluntary, as the provider takes them; these are the route's).
    if expect.acr_values and claims.get("acr") not in expect.acr_values:
        raise InvalidToken("id_token.acr_not_met", str(claims.get("acr"))[:64])
    # (13) with max_age asked, auth_time is required (3.1.2.1) and no older than max_age.
    if expect.max_age is not None:
        auth_time = claims.get("auth_time")
        if not isinstance(auth_time, int | float) or isinstance(auth_time, bool):
            raise InvalidToken("id_token.auth_time_missing")
        if expect.now - auth_time > expect.max_age + expect.skew:
            raise InvalidToken("id_token.auth_time_too_old")
    return claims


@dataclass(frozen=True)
class LogoutToken:
    """What a valid logout token says: whose sessions end, and what names the token."""

    sub: str | None
    sid: str | None
    jti: str
    iat: int


async def validate_refreshed_id_token(
    token: str, keys: JwksCache, expect: Expectations, original: Mapping[str, Any]
) -> dict[str, Any]:
    """An ID token from a refresh: §3.1.3.7 as at login, then OpenID Connect Core 1.0 §12.2
    against ``original``, the claims of the session's ID token (and ``expect.nonce``, the
    nonce of its login)."""
    claims = await _verified_claims(token, keys, expect, "id_token")
    # §12.2: iss the same as the original's (the one issuer, checked here), aud containing
    # our client_id, and the rest of §3.1.3.7.
    _validate_common(claims, expect, "id_token")
    # §12.2: sub the same as the original's: a refresh never changes who is signed in.
    if claims.get("sub") != original.get("sub"):
        raise InvalidToken("id_token.sub_changed")
    if original.get("iss") is not None and claims.get("iss") != original["iss"]:
        raise InvalidToken("id_token.iss_changed")
    # §12.2: no nonce, or the original one.
    if "nonce" in claims and claims["nonce"] != expect.nonce:
        raise InvalidToken("id_token.nonce_mismatch")
    # §12.2: auth_time, when present, is that of the original authentication.
    if (
        "auth_time" in claims
        and original.get("auth_time") is not None
        and claims["auth_time"] != original["auth_time"]
    ):
        raise InvalidToken("id_token.auth_time_changed")
    return claims


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a token, unverified; {} if it does not parse. Only for a token this
    relay verified when it received it and kept sealed since (the session's own ID token), or
    to read which issuer a token claims before holding it to that issuer's rules."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, UnicodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


async def validate_logout_token(
    token: str, keys: JwksCache, expect: Expectations, *, max_age: int
) -> LogoutToken:
    """OpenID Connect Back-Channel Logout 1.0 §2.6. ``max_age``: seconds after its iat (plus
    the skew) that a token is still accepted; the caller remembers its jti that long."""
    claims = await _verified_claims(token, keys, expect, "logout_token")
    # (3): iss, aud, iat (and exp when present) as for an ID token.
    _validate_common(claims, expect, "logout_token", exp_required=False)
    sub, sid = claims.get("sub"), claims.get("sid")
    # (4) sub or sid, or both.
    if sub is None and sid is None:
        raise InvalidToken("logout_token.no_sub_or_sid")
    if (sub is not None and not is_subject(sub)) or (sid is not None and not is_subject(sid)):
        raise InvalidToken("logout_token.bad_sub_or_sid")
    # (5) an events claim with the back-channel logout member, itself a JSON object.
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise InvalidToken("logout_token.bad_events")
    # (6) no nonce: a logout token must never pass for an ID token, nor the reverse.
    if "nonce" in claims:
        raise InvalidToken("logout_token.has_nonce")
    # §2.4: jti is REQUIRED; it is what lets a replay be told apart (§2.6 (7)).
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= 255:
        raise InvalidToken("logout_token.no_jti")
    # §2.6 (3) leaves "recent" to the receiver: a token older than max_age is refused, so a
    # jti need only be remembered that long. iat is an integer here (_validate_common).
    iat = int(claims["iat"])
    if expect.now - iat > max_age + expect.skew:
        raise InvalidToken("logout_token.too_old")
    return LogoutToken(sub, sid, jti, iat)


def is_subject(value: object) -> bool:
    # Also text the store can hold: PostgreSQL refuses NUL (a 503 blaming the database, on
    # one backend only), and a lone surrogate encodes in no driver (a 500).
    return (
        isinstance(value, str)
        and 0 < len(value) <= 255
        and "\x00" not in value
        and not any("\ud800" <= c <= "\udfff" for c in value)
    )


async def _verified_claims(
    token: str, keys: JwksCache, expect: Expectations, kind: str
) -> dict[str, Any]:
    header = token_header(token, kind)
    return await verified_claims(token, header, keys, expect.jwks_uri, expect.algorithms, kind=kind)


async def verified_claims(
    token: str,
    header: Mapping[str, Any],
    keys: JwksCache,
    jwks_uri: str,
    algorithms: Collection[str],
    *,
    kind: str,
) -> dict[str, Any]:
    """The payload of a JWS whose signature one of the issuer's keys verifies, with an
    algorithm allowed here; else InvalidToken (<kind>.<rule>)."""
    alg = header.get("alg")
    # §3.1.3.7 (6)/(7): only asymmetric algorithms the provider advertises and we allow; this is
    # what stops "none" and HS256-signed-with-the-public-key confusion before any key is used.
    if not isinstance(alg, str) or alg not in algorithms:
        raise InvalidToken(f"{kind}.alg_not_allowed", str(alg)[:32])
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken(f"{kind}.bad_kid")
    # RFC 7517 §4.4: a key that names its algorithm is used with that algorithm only, so a
    # kid cannot lend an RSA key to a token that says PS256 while the key says RS256.
    candidates = [k for k in await keys.candidates(jwks_uri, kid) if k.get("alg") in (None, alg)]
    if not candidates:
        raise InvalidToken(f"{kind}.unknown_kid", str(kid)[:64])
    return _verify(token, candidates, alg, kind)


def token_header(token: str, kind: str) -> dict[str, Any]:
    """The protected header of a compact JWS, unverified; InvalidToken if it does not parse."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise InvalidToken(f"{kind}.malformed")
    try:
        return dict(jws.extract_compact(token.encode("ascii")).headers())
    except (JoseError, ValueError, UnicodeError) as exc:
        raise InvalidToken(f"{kind}.malformed", type(exc).__name__) from exc


def _verify(token: str, candidates: list[Key], alg: str, kind: str) -> dict[str, Any]:
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
                raise InvalidToken(f"{kind}.unverifiable", type(exc).__name__) from exc
            continue
    raise InvalidToken(f"{kind}.bad_signature")


def _validate_common(
    claims: dict[str, Any], expect: Expectations, kind: str, *, exp_required: bool = True
) -> None:
    # (2) iss must match exactly: for a multi-tenant provider (issuer with {tenantid}), the
    # issuer of the token's own tid, which must be one of the tenants allowed.
    issuer = expect.issuer
    if TENANT in issuer:
        tenant = claims.get("tid")
        if not isinstance(tenant, str) or tenant not in expect.tenants:
            raise InvalidToken(f"{kind}.tenant_not_allowed", str(tenant)[:64])
        issuer = issuer.replace(TENANT, tenant)
    if claims.get("iss") != issuer:
        raise InvalidToken(f"{kind}.iss_mismatch")
    # (3) aud must contain our client_id and no audience we do not trust.
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or expect.client_id not in audiences:
        raise InvalidToken(f"{kind}.aud_mismatch")
    trusted = {expect.client_id, *expect.trusted_audiences}
    if any(a not in trusted for a in audiences):
        raise InvalidToken(f"{kind}.untrusted_audience")
    # (4) with several audiences, azp must be there; (5) when there, it must be our client_id.
    if len(audiences) > 1 and "azp" not in claims:
        raise InvalidToken(f"{kind}.azp_missing")
    if "azp" in claims and claims["azp"] != expect.client_id:
        raise InvalidToken(f"{kind}.azp_mismatch")
    # (9) exp in the future, (10) iat not in the future; both within the allowed skew.
    validate_times(claims, expect.now, expect.skew, kind, exp_required=exp_required)


def validate_times(
    claims: dict[str, Any],
    now: int,
    skew: int,
    kind: str,
    *,
    exp_required: bool = True,
    iat_required: bool = True,
) -> None:
    """RFC 7519 §4.1.4-4.1.6: exp not past, nbf and iat not ahead, each within ``skew``;
    InvalidToken (<kind>.expired, <kind>.bad_<claim>) otherwise."""
    registry = jwt.JWTClaimsRegistry(
        now=now,
        leeway=skew,
        exp={"essential": exp_required},
        iat={"essential": iat_required},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError as exc:
        raise InvalidToken(f"{kind}.expired") from exc
    except ClaimError as exc:
        raise InvalidToken(f"{kind}.bad_{exc.claim}") from exc
