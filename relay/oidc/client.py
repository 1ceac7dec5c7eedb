"""The two things a relying party says to the provider: "authorize" and "token"."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx2
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from relay.config import ProviderConfig
from relay.errors import BadRequest, Misconfigured, ProviderBadResponse, Unauthorized
from relay.oidc.client_auth import authenticate
from relay.oidc.discovery import ProviderMetadata
from relay.oidc.http import json_object, send


@dataclass(frozen=True)
class TokenResponse:
    id_token: str
    access_token: str | None
    refresh_token: str | None
    expires_in: int | None = None  # seconds the access token lives, when the provider says


@dataclass(frozen=True)
class Refreshed:
    """RFC 6749 §5.1 answer to a refresh: a new access token; a new refresh token when the
    provider rotates them; an ID token when it issues one (OIDC Core §12.2)."""

    access_token: str
    refresh_token: str | None
    id_token: str | None
    expires_in: int | None


class InvalidGrant(Unauthorized):
    """RFC 6749 §5.2 invalid_grant to a refresh: the refresh token is expired, revoked or was
    issued to someone else. Only a new login helps."""


@dataclass(frozen=True)
class Asked:
    """What one login asks of the provider beyond the config: who is signing in, and the
    stronger authentication a route demanded (step-up: acr_values, max_age)."""

    login_hint: str | None = None
    acr_values: tuple[str, ...] = ()
    max_age: int | None = None


async def authorization_url(
    client: httpx2.AsyncClient,
    metadata: ProviderMetadata,
    *,
    provider: ProviderConfig,
    redirect_uri: str,
    state: str,
    nonce: str,
    code_verifier: str,
    asked: Asked | None = None,
) -> str:
    """Where the browser goes to sign in: the authorization endpoint with the request in its
    query (OIDC Core 3.1.2.1), or, with Pushed Authorization Requests (RFC 9126), with only
    the request_uri the provider gave for the request pushed to it first."""
    params = _authorization_params(
        provider,
        redirect_uri=redirect_uri,
        state=state,
        nonce=nonce,
        code_verifier=code_verifier,
        asked=asked or Asked(),
    )
    endpoint = metadata.par_endpoint
    use_par = provider.pushed_authorization == "always" or (
        endpoint is not None and (provider.pushed_authorization == "auto" or metadata.require_par)
    )
    if use_par:
        if endpoint is None:
            raise Misconfigured(
                "par.not_offered",
                'provider.pushed_authorization is "always", but the provider advertises no '
                "pushed_authorization_request_endpoint",
            )
        params = {
            "client_id": provider.client_id,
            "request_uri": await _push(client, endpoint, provider, params),
        }
    separator = "&" if "?" in metadata.authorization_endpoint else "?"
    return metadata.authorization_endpoint + separator + urlencode(params, quote_via=quote)


async def _push(
    client: httpx2.AsyncClient, endpoint: str, provider: ProviderConfig, params: dict[str, str]
) -> str:
    """RFC 9126 §2: the authorization request, pushed with the client's authentication; the
    answer's request_uri stands for it at the authorization endpoint."""
    response = await authenticated_post(client, endpoint, provider, dict(params), "par")
    if response.status_code in (400, 401):
        _raise_if_client_rejected(response)
        raise ProviderBadResponse("par.refused", _error_code(response))
    if response.status_code not in (200, 201):
        raise ProviderBadResponse(f"par.status_{response.status_code}")
    request_uri = json_object(response, "par").get("request_uri")
    if not isinstance(request_uri, str) or not _VSCHAR.fullmatch(request_uri):
        raise ProviderBadResponse("par.missing_request_uri")
    return request_uri


def _authorization_params(
    provider: ProviderConfig,
    *,
    redirect_uri: str,
    state: str,
    nonce: str,
    code_verifier: str,
    asked: Asked,
) -> dict[str, str]:
    # RFC 7636 §4.2-4.3: only S256; "plain" would hand the verifier to anyone who sees the URL.
    params = {
        # OIDC Core 3.1.2.1: the operator's extra parameters first, so the relay's own win.
        **provider.extra_params,
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(provider.scopes),
        "state": state,
        "nonce": nonce,
        "code_challenge": create_s256_code_challenge(code_verifier),
        "code_challenge_method": "S256",
    }
    if provider.prompt is not None:
        params["prompt"] = provider.prompt
    # A route's step-up replaces the config's acr_values, and the shorter max_age wins.
    acr_values = asked.acr_values or tuple(provider.acr_values)
    if acr_values:
        params["acr_values"] = " ".join(acr_values)
    ages = [age for age in (provider.max_age, asked.max_age) if age is not None]
    if ages:
        params["max_age"] = str(min(ages))
    if asked.login_hint is not None:
        params["login_hint"] = asked.login_hint
    return params


async def exchange_code(
    client: httpx2.AsyncClient,
    *,
    metadata: ProviderMetadata,
    provider: ProviderConfig,
    redirect_uri: str,
    code: str,
    code_verifier: str,
) -> TokenResponse:
    """RFC 6749 §4.1.3 with RFC 7636 §4.5: trade the code and verifier for tokens."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    response = await _token_request(client, metadata, provider, form)
    if response.status_code in (400, 401):
        _raise_if_client_rejected(response)
        # invalid_grant and friends: the code was bad, used or expired; the user retries.
        raise BadRequest("token.rejected", _error_code(response))
    if response.status_code != 200:
        raise ProviderBadResponse(f"token.status_{response.status_code}")
    return _parse_token_response(json_object(response, "token"))


async def refresh_tokens(
    client: httpx2.AsyncClient,
    *,
    metadata: ProviderMetadata,
    provider: ProviderConfig,
    refresh_token: str,
    timeouts: httpx2.Timeout | None = None,
) -> Refreshed:
    """RFC 6749 §6: trade the refresh token for fresh tokens, with the client authenticating
    as at the code exchange. No scope: the grant keeps the one first granted (§6). ``timeouts``
    instead of the client's."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    response = await _token_request(client, metadata, provider, form, timeouts)
    if response.status_code in (400, 401):
        _raise_if_client_rejected(response)
        error = _error_code(response)
        if error == "invalid_grant":
            raise InvalidGrant("token.invalid_grant")
        # invalid_request, invalid_scope...: the provider refuses something we sent, which a
        # new login would not change; not a reason to end the session.
        raise ProviderBadResponse("token.refresh_refused", error)
    if response.status_code != 200:
        raise ProviderBadResponse(f"token.status_{response.status_code}")
    body = json_object(response, "token")
    _check_token_type(body)
    access = _token(body, "access_token")
    if access is None:
        raise ProviderBadResponse("token.missing_access_token")
    return Refreshed(
        access_token=access,
        refresh_token=_token(body, "refresh_token"),
        id_token=_token(body, "id_token"),
        expires_in=_expires_in(body),
    )


async def _token_request(
    client: httpx2.AsyncClient,
    metadata: ProviderMetadata,
    provider: ProviderConfig,
    form: dict[str, str],
    timeouts: httpx2.Timeout | None = None,
) -> httpx2.Response:
    return await authenticated_post(
        client, metadata.token_endpoint, provider, form, "token", timeouts=timeouts
    )


async def authenticated_post(
    client: httpx2.AsyncClient,
    endpoint: str,
    provider: ProviderConfig,
    form: dict[str, str],
    what: str,
    *,
    timeouts: httpx2.Timeout | None = None,
) -> httpx2.Response:
    """A form POST to one of the provider's endpoints for clients (token, introspection,
    revocation, pushed authorization), the relay authenticating as its client."""
    headers = {"Accept": "application/json"}
    authenticate(provider, endpoint, form, headers)
    request = client.build_request(
        "POST",
        endpoint,
        data=form,
        headers=headers,
        timeout=httpx2.USE_CLIENT_DEFAULT if timeouts is None else timeouts,
    )
    return await send(client, request, what)


async def revoke_refresh_token(
    client: httpx2.AsyncClient, endpoint: str, provider: ProviderConfig, refresh_token: str
) -> None:
    """RFC 7009 §2.1: the provider is asked to end the grant behind a refresh token (and,
    §2.1, the access tokens of that grant with it). §2.2: a 200 whether or not the token was
    still valid; anything else is a failure the caller logs."""
    form = {"token": refresh_token, "token_type_hint": "refresh_token"}
    response = await authenticated_post(client, endpoint, provider, form, "revocation")
    if response.status_code != 200:
        raise ProviderBadResponse(f"revocation.status_{response.status_code}")


def _raise_if_client_rejected(response: httpx2.Response) -> None:
    error = _error_code(response)
    # RFC 6749 §5.2: these say the provider does not accept *us*; no retry by the user
    # fixes that, only the operator.
    if response.status_code == 401 or error in _CLIENT_ERRORS:
        raise Misconfigured(
            "token.client_rejected",
            f"the provider answered {response.status_code} {error}: check "
            "provider.client_id, provider.client_secret (or provider.private_key_file and the "
            "jwks_uri registered) and provider.token_endpoint_auth_method against the client "
            "registered there",
        )


_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client", "unsupported_grant_type"})


def _error_code(response: httpx2.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "unparseable"
    error = body.get("error") if isinstance(body, dict) else None
    return error[:64] if isinstance(error, str) else "unknown"


def _check_token_type(body: dict[str, Any]) -> None:
    token_type = body.get("token_type")
    # OIDC Core §3.1.3.3: token_type must be Bearer (case-insensitive).
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ProviderBadResponse("token.bad_token_type")


def _expires_in(body: dict[str, Any]) -> int | None:
    # RFC 6749 §5.1: seconds, recommended. Some providers send it as a string.
    value = body.get("expires_in")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _parse_token_response(body: dict[str, Any]) -> TokenResponse:
    _check_token_type(body)
    id_token = _token(body, "id_token")
    if id_token is None:
        raise ProviderBadResponse("token.missing_id_token")
    return TokenResponse(
        id_token=id_token,
        access_token=_token(body, "access_token"),
        refresh_token=_token(body, "refresh_token"),
        expires_in=_expires_in(body),
    )


# RFC 6749 Appendix A.12 and A.17: access-token and refresh-token are 1*VSCHAR (%x20-7E); an
# ID token is a compact JWS (RFC 7515 §7.1), base64url and dots, well inside that. A token
# outside it cannot travel in an Authorization header (httpx refuses non-ASCII, a CR or LF
# would split the header), nor be stored (PostgreSQL text refuses NUL): nonsense from the
# provider, said as such (502) before anything uses it or a session is written.
_VSCHAR = re.compile(r"[\x20-\x7e]+")


def _token(body: dict[str, Any], name: str) -> str | None:
    """The named token, None when absent (or not a string, as before); a string outside
    VSCHAR is a bad response."""
    value = body.get(name)
    if not isinstance(value, str) or not value:
        return None
    if not _VSCHAR.fullmatch(value):
        raise ProviderBadResponse(
            f"token.malformed_{name}", f"{name} holds characters outside %x20-7E (RFC 6749 A)"
        )
    return value


async def fetch_userinfo(
    client: httpx2.AsyncClient, endpoint: str, access_token: str
) -> dict[str, Any]:
    """OIDC Core §5.3.1: the access token goes in the Authorization header (RFC 6750 §2.1)."""
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
    response = await send(
        client, client.build_request("GET", endpoint, headers=headers), "userinfo"
    )
    if response.status_code != 200:
        raise ProviderBadResponse(f"userinfo.status_{response.status_code}")
    return json_object(response, "userinfo")
