"""GET /auth (forward-auth), GET /userinfo, GET+POST /logout (and oauth2-proxy's /sign_out),
and the relay's own home page."""

from __future__ import annotations

import html
from urllib.parse import urlencode, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.websockets import WebSocket

from relay.bearer import bearer_token
from relay.endpoints import ABSENT, Context, context, same_origin
from relay.errors import (
    AccessDenied,
    Forbidden,
    InvalidBearer,
    RelayError,
    StepUpRequired,
    Unauthorized,
)
from relay.flows import SIGNED_OUT
from relay.forwarded import forwarded_host, is_navigation, original_url
from relay.pages import error_response, page
from relay.redirects import safe_redirect
from relay.store.records import ActiveSession

log = structlog.get_logger("relay.session")


async def auth(request: Request) -> Response:
    """nginx auth_request flavour: 2xx with identity headers, or 401."""
    ctx = context(request)
    return _identity_response(ctx, await _admit(request, ctx))


async def auth_redirect(request: Request) -> Response:
    """Traefik/Caddy flavour: like /auth, but a browser navigation without a session is sent
    to /login with the original URL as rd; API and XHR requests still get 401."""
    ctx = context(request)
    try:
        session = await _admit(request, ctx)
    except Unauthorized as exc:
        if isinstance(exc, InvalidBearer) or not is_navigation(request, ctx.proxies):
            raise
        query = {}
        rd = original_url(request, ctx.proxies)
        if rd is not None:
            query["rd"] = rd
        if isinstance(exc, StepUpRequired):
            query |= exc.asked  # the login asks the provider for what the route needs
        login = ctx.config.server.public_url + "/login"
        if query:
            login += "?" + urlencode(query)
        return RedirectResponse(login, status_code=302)
    return _identity_response(ctx, session)


async def auth_handshake(websocket: WebSocket) -> None:
    """/auth and /auth/redirect reached as a WebSocket handshake: proxies that keep a client's
    Upgrade headers on their auth request (Caddy's forward_auth) make it one. Answer with the
    same HTTP response the plain request gets, through the WebSocket Denial Response
    extension, so the proxy decides the upgrade exactly as it decides any request."""
    scope = {**websocket.scope, "type": "http", "method": "GET"}
    request = Request(scope)
    endpoint = auth_redirect if scope["path"].endswith("/redirect") else auth
    try:
        response = await endpoint(request)
    except RelayError as exc:
        response = await error_response(request, exc)
    await websocket.send_denial_response(response)


def _identity_response(ctx: Context, session: ActiveSession) -> Response:
    response = Response(status_code=200)
    response.raw_headers = ctx.identity.render(session)
    return response


async def _admit(request: Request, ctx: Context) -> ActiveSession:
    """The session behind the request's cookie, judged by the rules for the app asking: the
    forwarded host's and the query string's (/auth?allowed_groups=admins). Without the
    relay's cookie, an API caller's bearer token, when [bearer] is on."""
    session_id = ctx.cookies.session_id(request)
    host = forwarded_host(request, ctx.proxies)
    query = request.scope["query_string"].decode("latin-1")  # as the shortcut reads it
    if session_id is None and ctx.gate.bearer is not None:
        token = bearer_token(request.headers.get("authorization"))
        if token is not None:
            return await ctx.gate.admit_token(token, host, query)
    return await ctx.gate.admit(session_id, host, query, absent=request.scope.get(ABSENT))


async def userinfo(request: Request) -> Response:
    ctx = context(request)
    session = await ctx.gate.admit(ctx.cookies.session_id(request))
    return JSONResponse(session.claims | {"sub": session.subject})


async def logout_page(request: Request) -> Response:
    return await _confirmation(context(request), "/logout", None)


async def logout(request: Request) -> Response:
    return await _end_session(request, context(request), None)


async def sign_out_page(request: Request) -> Response:
    """oauth2-proxy's GET /sign_out, which signs out on a GET. Here it only asks: a sign-out
    on GET can be set off by any site (a link, an <img>). An allowed rd rides along."""
    ctx = context(request)
    return await _confirmation(ctx, "/sign_out", _sign_out_rd(request, ctx))


async def sign_out(request: Request) -> Response:
    """POST /sign_out: /logout, except that an rd passing the redirect allow-list is where
    the browser goes next, as with oauth2-proxy, instead of the provider's end-session."""
    ctx = context(request)
    return await _end_session(request, ctx, _sign_out_rd(request, ctx))


async def _confirmation(ctx: Context, path: str, rd: str | None) -> Response:
    action = ctx.config.server.public_url + path
    targets = await logout_targets(ctx)
    if rd is not None:
        action += "?" + urlencode({"rd": rd})
        if not rd.startswith("/"):  # CSP form-action also governs the redirect after the POST
            parts = urlsplit(rd)
            targets.append(f"{parts.scheme}://{parts.netloc}")
    return page(
        "Sign out",
        f'<form method=post action="{html.escape(action)}">'
        "<p>Sign out of all apps behind this relay?</p>"
        "<button type=submit>Sign out</button></form>",
        form_targets=targets,
    )


async def _end_session(request: Request, ctx: Context, rd: str | None) -> Response:
    if not same_origin(request, ctx.config.server.origin):
        raise Forbidden("logout.cross_origin")
    after = await ctx.flows.logout(ctx.cookies.session_id(request))
    response = RedirectResponse(rd or after, status_code=303)
    ctx.cookies.clear_session(response)
    return response


def _sign_out_rd(request: Request, ctx: Context) -> str | None:
    """rd, if it passes the redirect allow-list; else None (and the refusal is logged)."""
    rd = request.query_params.get("rd")
    if not rd:
        return None
    config = ctx.config
    allowed = safe_redirect(rd, config.redirects.allowed_hosts, config.server.origin, "")
    if not allowed:
        log.info(
            "logout.rd_refused",
            rd=rd[:200],
            hint="add the host to redirects.allowed_hosts if it is yours",
        )
        return None
    return allowed


async def logout_targets(ctx: Context) -> list[str]:
    # CSP form-action also governs the redirects after the POST: allow the providers' logout
    # (the session may be any provider's).
    targets: list[str] = []
    for provider in ctx.flows.providers.all:
        try:
            metadata = await provider.discovery.get()
        except RelayError:
            continue
        if metadata.end_session_endpoint is None:
            continue
        for url in (metadata.end_session_endpoint, provider.config.post_logout_redirect_url):
            if url:
                parts = urlsplit(url)
                origin = f"{parts.scheme}://{parts.netloc}"
                if origin not in targets:
                    targets.append(origin)
    return targets


async def home(request: Request) -> Response:
    ctx = context(request)
    prefix = html.escape(ctx.config.server.public_url)
    try:
        session = await ctx.gate.session(ctx.cookies.session_id(request))
    except Unauthorized:
        # After a sign-out the provider sends the browser back here with the state the
        # relay gave it (RP-Initiated Logout 1.0 §3); without a provider logout, the relay does.
        if request.query_params.get("state") == SIGNED_OUT:
            return page(
                "You are signed out",
                "<p>You are signed out of the apps behind this relay.</p>"
                f'<p><a href="{prefix}/login">Sign in again</a></p>',
            )
        return page("Not signed in", f'<p><a href="{prefix}/login">Sign in</a></p>')
    name = session.claims.get("email") or session.subject
    return page(
        "Signed in",
        f"<p>You are signed in as <strong>{html.escape(str(name))}</strong>.</p>"
        f'<p><a href="{prefix}/sessions">Your sessions</a> · '
        f'<a href="{prefix}/logout">Sign out</a></p>',
    )


async def forbidden(request: Request) -> Response:
    """The page a proxy shows when /auth said 403 (deploy/nginx.conf: error_page 403), so
    the person sees the relay's "Not allowed", with Sign out and their sessions, instead of
    the proxy's bare page. Any method: nginx hands it the original request. The reason is in
    the log line of the check that refused."""
    ctx = context(request)
    sign_out = ctx.config.server.public_url + "/logout"
    try:
        await ctx.gate.session(ctx.cookies.session_id(request))
    except Unauthorized:
        raise Forbidden(
            "access.forbidden_page", public_message="This page is not open to you."
        ) from None
    raise AccessDenied(
        "access.forbidden_page", "This page is not open to your account.", "", sign_out
    )
