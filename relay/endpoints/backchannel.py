"""What the provider asks of the relay, server to server (no cookies, no Origin):
POST /backchannel-logout, a user's session ended (OpenID Connect Back-Channel Logout 1.0);
GET /jwks.json, the relay's public key for private_key_jwt (relay/oidc/client_auth.py)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.endpoints import context
from relay.errors import BadRequest, NotFound
from relay.oidc.client_auth import published_keys
from relay.pages import json_error

MAX_BODY = 64 * 1024  # a logout token is a few hundred bytes


async def backchannel_logout(request: Request) -> Response:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return json_error(413, "invalid_request", "The logout token is too large.")
    form = dict(parse_qsl(body.decode("utf-8", "replace")))
    try:
        await context(request).flows.backchannel_logout(form.get("logout_token"))
    except BadRequest as exc:
        # §2.8: a 400, optionally with an OAuth-style error; the reason is ours, not the token.
        return json_error(400, "invalid_request", exc.public_message, error_description=exc.reason)
    return Response(status_code=200)


async def jwks(request: Request) -> Response:
    """The public half of the key the relay signs its client assertions with (404 unless
    provider.token_endpoint_auth_method is private_key_jwt). Read from the key file as it
    is now: a rotated key is published as soon as it is in place."""
    keys = [
        key
        for provider in context(request).config.login_providers
        for key in published_keys(provider)
    ]
    if not keys:
        raise NotFound("jwks.not_private_key_jwt")
    # Not cached longer than a provider would keep it anyway: a key published as the next
    # one should reach the provider before the relay signs with it.
    return JSONResponse({"keys": keys}, headers={"Cache-Control": "max-age=60"})
