"""POST /backchannel-logout: the provider tells the relay that a user's session ended
(OpenID Connect Back-Channel Logout 1.0). Server to server: no cookies, no Origin."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from relay.endpoints import context
from relay.errors import BadRequest
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
