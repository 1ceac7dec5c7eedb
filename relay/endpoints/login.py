"""GET /login and GET /callback: the two legs of the authorization-code flow."""

from __future__ import annotations

import html
from urllib.parse import urlencode, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from relay import step_up
from relay.bearer import bearer_token
from relay.devices import Browser
from relay.endpoints import Context, context
from relay.errors import BadRequest, InvalidBearer, TooManyRequests, Unauthorized
from relay.forwarded import (
    client_address,
    forwarded_host,
    from_trusted_proxy,
    is_navigation,
    original_url,
)
from relay.oidc.client import Asked
from relay.pages import page, redirect_page
from relay.providers import Provider
from relay.ratelimit import client_bucket

log = structlog.get_logger("relay.login")

_TWO_COOKIES = (
    "Your browser sent two sign-in cookies for this site, one of them set by another site. "
    "Clear this site's cookies in your browser, then sign in again."
)


async def login(request: Request) -> Response:
    """Send a browser to the provider. Anything else gets the 401 it can act on: nginx's
    error_page hands /login whatever request lacked a session, API calls and POSTs included,
    and a redirect would only confuse a script and leave a pending login behind."""
    ctx = context(request)
    if not is_navigation(request, ctx.proxies):
        # nginx hands /login an API caller whose token /auth refused: it gets the 401 a
        # bearer-token client reads (RFC 6750 §3), as Caddy's gets it from /auth itself.
        token = bearer_token(request.headers.get("authorization"))
        if ctx.gate.bearer is not None and token is not None:
            raise InvalidBearer("login.bearer_refused")
        raise Unauthorized("login.not_navigation")
    if ctx.cookies.duplicated(request):
        # /auth treats the pair as no session and sends the browser here; a new login would
        # not remove the cookie someone else set, and the browser would come straight back.
        raise BadRequest("login.duplicate_cookie", public_message=_TWO_COOKIES)
    rd = request.query_params.get("rd") or _forwarded_return_url(request, ctx)
    provider = _provider(request, ctx, rd)
    if provider is None:
        return _chooser(request, ctx, rd)
    address = client_address(request, ctx.proxies)
    client = None
    if address is None:
        log.warning(
            "login.client_unknown",
            hint="the trusted proxy sent no X-Forwarded-For or X-Real-IP: per-address limits "
            "cannot apply to its requests",
        )
    else:
        limits = ctx.config.limits
        client = client_bucket(address, limits.ipv4_prefix, limits.ipv6_prefix)
        if not await ctx.login_limiter.allow(client):
            log.warning("login.refused", reason="rate_limited", client=address, bucket=client)
            raise TooManyRequests("login.rate_limited")
    wanted = step_up.demand(request.scope["query_string"].decode("latin-1"))
    if wanted.unreadable is not None:
        raise BadRequest("login.bad_step_up", wanted.unreadable)
    asked = Asked(_login_hint(request), wanted.acr, wanted.max_age)
    started = await ctx.flows.start_login(rd, client, asked, provider)
    response = redirect_page(started.provider_url)
    ctx.cookies.set_login(response, started.login_id, ctx.config.session.pending_lifetime)
    return response


def _provider(request: Request, ctx: Context, rd: str | None) -> Provider | None:
    """The provider this login goes to: the one ?provider= names, else the one configured for
    the host of the page the person is going to, else for the forwarded host; None: several,
    and nothing says which (the person chooses)."""
    providers = ctx.flows.providers
    name = request.query_params.get("provider")
    if name is not None:
        found = providers.named(name)
        if found is None:
            raise BadRequest(
                "login.unknown_provider", name[:32], public_message="No such way to sign in."
            )
        return found
    going_to = urlsplit(rd).netloc if rd and "://" in rd else None
    return providers.for_hosts([going_to, forwarded_host(request, ctx.proxies)])


def _chooser(request: Request, ctx: Context, rd: str | None) -> Response:
    """A page with one link per provider, each a /login naming it, with what this one was
    asked (the return URL, a step-up, a login hint) carried along."""
    kept = {k: v for k, v in request.query_params.items() if k in _CARRIED}
    if rd:
        kept["rd"] = rd
    login = ctx.config.server.public_url + "/login?"
    items = "".join(
        f'<li><a href="{html.escape(login + urlencode(kept | {"provider": p.name}))}">'
        f"{html.escape(p.label)}</a></li>"
        for p in ctx.flows.providers.all
    )
    return page("Sign in", f"<p>Sign in with:</p><ul>{items}</ul>")


_CARRIED = ("login_hint", step_up.QUERY_ACR, step_up.QUERY_MAX_AGE)


def _login_hint(request: Request) -> str | None:
    """/login?login_hint=: who is signing in, passed to the provider (OIDC Core 3.1.2.1) so
    an app that knows the person can skip the account picker. Only a short, printable one:
    it ends up in the provider's URL and, maybe, its form."""
    hint = request.query_params.get("login_hint")
    if hint is None or not 0 < len(hint) <= 256 or not hint.isprintable():
        return None
    return hint


def _forwarded_return_url(request: Request, ctx: Context) -> str | None:
    """Without rd, a trusted proxy names the page to return to: in oauth2-proxy's
    X-Auth-Request-Redirect (a URL, or a path on the host the browser is on), else in
    X-Forwarded-* (nginx's error_page hands /login the original request this way, with its
    query string intact). A URL inside the relay itself is never a return target (it would
    loop back to /login): oauth2-proxy's nginx example sets X-Auth-Request-Redirect on every
    request to /oauth2/, so it often names /oauth2/start itself."""
    for url in (_auth_request_redirect(request, ctx), original_url(request, ctx.proxies)):
        if url is not None and not _inside_relay(url, ctx):
            return url
    return None


def _auth_request_redirect(request: Request, ctx: Context) -> str | None:
    if not from_trusted_proxy(request, ctx.proxies):
        return None
    return request.headers.get("x-auth-request-redirect") or None


def _inside_relay(url: str, ctx: Context) -> bool:
    server = ctx.config.server
    if url.startswith("/") and not url.startswith("//"):
        url = server.origin + url  # a path: on the host the browser is on, the relay's
    return url == server.public_url or url.startswith(server.public_url + "/")


async def callback(request: Request) -> Response:
    ctx = context(request)
    if ctx.cookies.duplicated(request):
        raise BadRequest("callback.duplicate_cookie", public_message=_TWO_COOKIES)
    browser = Browser(request.headers.get("user-agent"), client_address(request, ctx.proxies))
    done = await ctx.flows.finish_login(
        request.query_params,
        ctx.cookies.login_id(request),
        browser,
        replacing=ctx.cookies.session_id(request),
    )
    response = RedirectResponse(done.return_to, status_code=302)
    ctx.cookies.set_session(response, done.session_id, done.max_age)
    return response
