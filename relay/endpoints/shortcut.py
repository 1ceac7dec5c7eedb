"""The forward-auth shortcut: GET/HEAD /auth and /auth/redirect answered before routing
(pure ASGI, inside RequestContext).

A proxy asks /auth for every request of every app behind it, so this is the relay's hot path;
Starlette's routing, request and response objects cost more than the answer itself. The
shortcut finds the session (from the cache, or with the one lookup of a cache miss:
``Sessions.get``) and, when it is signed in, no refresh is due and the rules admit it,
answers with exactly the response the endpoint would give, from headers rendered once per
version of the session. Anything else (no cookie, no session, a refresh due, a refusal, an
error) is the endpoint's whole job: the shortcut calls it directly, with the app's one
exception handler, rather than through the router and the exception middleware, which add
nothing for these two paths. There is one place where a session is judged, ``Sessions``,
and one where rules are, ``Access``.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.bearer import bearer_token
from relay.cookies import cookie_id
from relay.crypto import hash_id
from relay.endpoints import ABSENT, SESSION, TOKEN, Context, session
from relay.errors import RelayError
from relay.middleware import SECURED, secured
from relay.pages import error_response
from relay.step_up import FOREVER
from relay.store.records import ActiveSession

_READS = frozenset({"GET", "HEAD"})
# Per session: the apps (query strings, forwarded hosts) one user checks against at once.
_VERDICTS_MAX = 32
_HEADERS = "headers"  # the memo's key for the rendered headers; verdicts are keyed by tuples


class AuthShortcut:
    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self._paths = {
            prefix + "/auth": session.auth,
            prefix + "/auth/redirect": session.auth_redirect,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._paths.get(scope.get("path", ""))
        if endpoint is None or scope["type"] != "http" or scope["method"] not in _READS:
            await self.app(scope, receive, send)
            return
        scope["endpoint"] = endpoint  # for the metrics and the access line
        ctx: Context = scope["app"].state.relay
        request = None
        try:
            headers = await self._answer(ctx, scope)
            if headers is None:
                request = Request(scope, receive, send)
                response = await endpoint(request)
        except RelayError as exc:
            response = await error_response(request or Request(scope, receive, send), exc)
            headers = None
        if headers is not None:
            scope[SECURED] = True
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await response(scope, receive, send)

    async def _answer(self, ctx: Context, scope: Scope) -> Sequence[tuple[bytes, bytes]] | None:
        """The answer's headers when the session (or an API caller's token seen before) is
        signed in, no refresh is due and the rules admit it; None: the endpoint's to answer."""
        access, bearer = ctx.gate.access, ctx.gate.bearer
        cookie, host, authorization = _read_headers(
            scope, access.has_host_rules, bearer is not None
        )
        session_id = None
        if cookie is not None:
            session_id = cookie_id(cookie.decode("latin-1"), ctx.cookies.session_name)
        if session_id is not None:
            active = await self._session(ctx, scope, session_id)
            if active is None:
                return None
            # For the access line, if one is written (most successful checks are not
            # logged): hashed for it there, not here on every check.
            scope[SESSION] = active.id_hash
        elif authorization is not None and bearer is not None:
            # No relay cookie: a token the relay verified before passes on its times alone;
            # any other is the endpoint's to judge (relay/bearer.py).
            token = bearer_token(authorization.decode("latin-1"))
            active = bearer.seen(token, ctx.now()) if token else None
            if active is None:
                return None
            scope[TOKEN] = active.id_hash
        else:
            return None
        # The cache hands out the same ActiveSession until the session changes (a refresh, a
        # new read; a touch only moves its times): its headers and verdicts are worked out
        # once per change, not per request, and kept on it (ActiveSession.memo). As tuples of
        # bytes, which the garbage collector stops tracking: 100,000 memos cost it nothing.
        memo = active.memo
        headers = memo.get(_HEADERS)
        if headers is None:
            # With the security headers every relay response carries (relay/middleware.py),
            # added here once per version of the session rather than on every check.
            headers = memo[_HEADERS] = secured(ctx.identity.render(active))
        if host is not None and (scope.get("client") or ("",))[0] not in ctx.proxies:
            host = None  # only a trusted proxy names the app
        key = (scope["query_string"], host)
        # The verdict for this app is the last second it holds: FOREVER, or a step-up's
        # max_age away from the sign-in, or -1 (refused).
        until = memo.get(key)
        if until is None:
            if len(memo) > _VERDICTS_MAX:
                memo.clear()
                memo[_HEADERS] = headers
            forwarded = None if host is None else host.decode("latin-1")
            query = scope["query_string"].decode("latin-1")
            until = memo[key] = ctx.gate.admits_until(active.claims, forwarded, query)
        # A refusal is the routed endpoint's to give: it logs the reason and renders the page.
        return headers if until == FOREVER or ctx.now() <= until else None

    async def _session(self, ctx: Context, scope: Scope, session_id: str) -> ActiveSession | None:
        """The signed-in session with no refresh due, from the cache or, on a miss, the
        table's answer, read here (one lookup) rather than after the endpoint's request,
        cookie and response objects. What it cannot admit the endpoint judges without a
        second lookup (``ABSENT``)."""
        id_hash, now = hash_id(session_id), ctx.now()
        sessions = ctx.sessions
        active = sessions.cached(id_hash, now)
        if active is None:
            active = await sessions.get(id_hash, now)
            if active is None:
                scope[ABSENT] = id_hash
            elif sessions.refresh_due(active, now):
                return None
        return active


def _read_headers(
    scope: Scope, by_host: bool, bearer: bool
) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The first Cookie line; (only while rules are per host) every X-Forwarded-Host line,
    comma-joined, as the routed endpoint reads it (forwarded_host); (only while [bearer] is
    on) the first Authorization line."""
    cookie = host = authorization = None
    for name, value in scope["headers"]:
        if name == b"cookie":
            if cookie is None:
                cookie = value
                if not by_host and not bearer:
                    break
        elif name == b"x-forwarded-host":
            if by_host:
                host = value if host is None else host + b"," + value
        elif name == b"authorization" and bearer and authorization is None:
            authorization = value
    return cookie, host, authorization
