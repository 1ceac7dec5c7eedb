"""GET /login and GET /callback: the two legs of the authorization-code flow."""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from relay.endpoints import Context, context
from relay.errors import TooManyRequests, Unauthorized
from relay.forwarded import client_address, is_navigation, original_url

log = structlog.get_logger("relay.login")


async def login(request: Request) -> Response:
    """Send a browser to the provider. Anything else gets the 401 it can act on: nginx's
    error_page hands /login whatever request lacked a session, API calls and POSTs included,
    and a redirect would only confuse a script and leave a pending login behind."""
    ctx = context(request)
    if not is_navigation(request, ctx.proxies):
        raise Unauthorized("login.not_navigation")
    client = client_address(request, ctx.proxies)
    if client is None:
        log.warning(
            "login.client_unknown",
            hint="the trusted proxy sent no X-Forwarded-For or X-Real-IP: per-address limits "
            "cannot apply to its requests",
        )
    elif not await ctx.login_limiter.allow(client):
        log.warning("login.refused", reason="rate_limited", client=client)
        raise TooManyRequests("login.rate_limited")
    rd = request.query_params.get("rd") or _forwarded_return_url(request, ctx)
    started = await ctx.flows.start_login(rd, ctx.cookies.login_id(request), client)
    response = RedirectResponse(started.provider_url, status_code=302)
    ctx.cookies.set_login(response, started.login_id, ctx.config.session.pending_lifetime)
    return response


def _forwarded_return_url(request: Request, ctx: Context) -> str | None:
    """Without rd, a trusted proxy's X-Forwarded-* name the page to return to: nginx's
    error_page hands /login the original request this way, with its query string intact.
    A URL inside the relay itself is never a return target (it would loop back to /login)."""
    url = original_url(request, ctx.proxies)
    public_url = ctx.config.server.public_url
    if url is None or url == public_url or url.startswith(public_url + "/"):
        return None
    return url


async def callback(request: Request) -> Response:
    ctx = context(request)
    done = await ctx.flows.finish_login(request.query_params, ctx.cookies.login_id(request))
    response = RedirectResponse(done.return_to, status_code=302)
    ctx.cookies.set_session(response, done.session_id, done.max_age)
    return response
