"""GET /login and GET /callback: the two legs of the authorization-code flow."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from relay.endpoints import context


async def login(request: Request) -> Response:
    ctx = context(request)
    started = await ctx.flows.start_login(
        request.query_params.get("rd"), ctx.cookies.login_id(request)
    )
    response = RedirectResponse(started.provider_url, status_code=302)
    ctx.cookies.set_login(response, started.login_id, ctx.flows.config.session.pending_lifetime)
    return response


async def callback(request: Request) -> Response:
    ctx = context(request)
    done = await ctx.flows.finish_login(request.query_params, ctx.cookies.login_id(request))
    response = RedirectResponse(done.return_to, status_code=302)
    ctx.cookies.set_session(response, done.session_id, done.max_age)
    return response
