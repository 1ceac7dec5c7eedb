"""API callers' access tokens, judged as a resource server judges them.

A JWT: RFC 9068 (JWT Profile for OAuth 2.0 Access Tokens) §4, verified then validated in the
two steps of tokens.py. An opaque token: RFC 7662 (Token Introspection) §2, the answer
validated as strictly. Either way the caller's claims come out, or InvalidBearer with
``access_token.<rule>`` as its reason.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import httpx2

from relay.config import ProviderConfig
from relay.errors import InvalidBearer, ProviderBadResponse
from relay.oidc.client import authenticated_post
from relay.oidc.http import json_object
from relay.oidc.jwks import JwksCache
from relay.oidc.tokens import InvalidToken, is_subject, validate_times, verified_claims

KIND = "access_token"
_AT_JWT = frozenset({"at+jwt", "application/at+jwt"})


@dataclass(frozen=True)
class Audience:
    """What a token must say to be for us, from one issuer."""

    issuer: str
    audiences: frozenset[str]
    algorithms: tuple[str, ...]
    at_jwt: bool  # RFC 9068 typ required
    skew: int


async def validate_jwt(
    token: str,
    header: dict[str, Any],
    keys: JwksCache,
    jwks_uri: str,
    expect: Audience,
    *,
    now: int,
) -> dict[str, Any]:
    """RFC 9068 §4, each step numbered as there."""
    # (1) typ is at+jwt (or application/at+jwt): what keeps an ID token, signed by the same
    # keys for the same audience, from passing as an access token.
    typ = header.get("typ")
    if expect.at_jwt and not (isinstance(typ, str) and typ.lower() in _AT_JWT):
        raise InvalidBearer(f"{KIND}.typ_not_at_jwt", str(typ)[:32])
    try:
        # (4), (5): an allowed algorithm, the signature verified with one of the issuer's keys.
        claims = await verified_claims(token, header, keys, jwks_uri, expect.algorithms, kind=KIND)
        # (2) iss exactly the issuer's identifier: the keys were that issuer's (picked by the
        # unverified iss), and the signed claim must say so too, character for character.
        if claims.get("iss") != expect.issuer:
            raise InvalidToken(f"{KIND}.iss_mismatch")
        # (3) aud names this resource server.
        _check_audience(claims.get("aud"), expect.audiences)
        # (6) exp required and not past; nbf and iat (optional here) not ahead; with the skew.
        validate_times(claims, now, expect.skew, KIND, iat_required=False)
    except InvalidToken as exc:
        raise InvalidBearer(exc.reason, exc.detail) from exc
    # RFC 9068 §2.2: sub is required (the client's id for a client-credentials token).
    if not is_subject(claims.get("sub")):
        raise InvalidBearer(f"{KIND}.bad_sub")
    return claims


async def introspect(
    client: httpx2.AsyncClient,
    endpoint: str,
    provider: ProviderConfig,
    token: str,
    expect: Audience,
    *,
    now: int,
) -> dict[str, Any]:
    """RFC 7662 §2.1: ask the provider, the relay authenticating as its client; §2.2: only
    ``active: true`` passes, and the answer is held to the same rules as a JWT's claims."""
    form = {"token": token, "token_type_hint": "access_token"}
    response = await authenticated_post(client, endpoint, provider, form, "introspection")
    if response.status_code != 200:
        raise ProviderBadResponse(f"introspection.status_{response.status_code}")
    answer = json_object(response, "introspection")
    if answer.get("active") is not True:
        raise InvalidBearer(f"{KIND}.inactive")
    # A refresh token is active too, but is no access token (RFC 7662 §2.2 token_type).
    token_type = answer.get("token_type")
    if isinstance(token_type, str) and token_type.lower() not in ("bearer", "access_token"):
        raise InvalidBearer(f"{KIND}.not_an_access_token", token_type[:32])
    if "iss" in answer and answer["iss"] != expect.issuer:
        raise InvalidBearer(f"{KIND}.iss_mismatch")
    # An answer that names no audience cannot show the token is for us: refused.
    _check_audience(answer.get("aud"), expect.audiences)
    # exp is optional in RFC 7662; when given, it bounds how long the answer is reused.
    exp = answer.get("exp")
    if exp is not None and (not _is_time(exp) or exp + expect.skew <= now):
        raise InvalidBearer(f"{KIND}.expired")
    if "nbf" in answer and (not _is_time(answer["nbf"]) or answer["nbf"] - expect.skew > now):
        raise InvalidBearer(f"{KIND}.bad_nbf")
    # RFC 7662 §2.2 sub, else the client's id (a client-credentials token has no user).
    subject = answer.get("sub", answer.get("client_id"))
    if not is_subject(subject):
        raise InvalidBearer(f"{KIND}.bad_sub")
    return answer | {"sub": subject}


def _check_audience(aud: Any, ours: Collection[str]) -> None:
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not any(
        isinstance(a, str) and a in ours for a in audiences
    ):
        raise InvalidBearer(f"{KIND}.aud_mismatch")


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
