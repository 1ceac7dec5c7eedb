"""The forward-auth shortcut: GET/HEAD /auth and /auth/redirect answered before routing
(pure ASGI, inside RequestContext).

A proxy asks /auth for every request of every app behind it, so this is the relay's hot path;
Starlette's routing, request and response objects cost more than the answer itself. When the
session cache alone can vouch for the session (a signed-in session it holds, no refresh due;
a touch due is queued, store/touches.py), the shortcut answers with exactly the response the
endpoint would give, from headers rendered once per session. Anything else (no cookie, a
cache miss, a refresh due, an untrusted cache, a refusal) is the endpoint's whole job: the
shortcut calls it directly, with the app's one exception handler, rather than through the
router and the exception middleware, which add nothing for these two paths and cost a cache
miss about a tenth of its time. There is one
place where a session is judged, ``Sessions``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.cookies import cookie_id
from relay.crypto import hash_id
from relay.endpoints import SESSION, Context, session
from relay.errors import RelayError
from relay.pages import error_response

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
        if endpoint is not None and scope["type"] == "http" and scope["method"] in _READS:
            scope["endpoint"] = endpoint  # for the metrics and the access line
            headers = self._answer(scope["app"].state.relay, scope)
            if headers is not None:
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
            request = Request(scope, receive, send)
            try:
                response = await endpoint(request)
            except RelayError as exc:
                response = await error_response(request, exc)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _answer(self, ctx: Context, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        access = ctx.gate.access
        by_host = access.has_host_rules
        cookie = host = None
        for name, value in scope["headers"]:
            if name == b"cookie" and cookie is None:
                cookie = value
                if not by_host:
                    break
            elif name == b"x-forwarded-host" and by_host:
                # Every line, comma-joined, as the routed endpoint reads it (forwarded_host).
                host = value if host is None else host + b"," + value
        if cookie is None:
            return None
        session_id = cookie_id(cookie.decode("latin-1"), ctx.cookies.session_name)
        if session_id is None:
            return None
        active = ctx.sessions.cached(hash_id(session_id), ctx.now())
        if active is None:
            return None
        # For the access line, if one is written (most successful checks are not logged):
        # hashed for it there, not here on every check.
        scope[SESSION] = active.id_hash
        # The cache hands out the same ActiveSession until the session changes (a touch, a
        # new read): its headers and verdicts are worked out once per change, not per request,
        # and kept on it (ActiveSession.memo).
        memo = active.memo
        headers = memo.get(_HEADERS)
        if headers is None:
            headers = memo[_HEADERS] = ctx.identity.render(active)
        if host is not None and (scope.get("client") or ("",))[0] not in ctx.proxies:
            host = None  # only a trusted proxy names the app
        key = (scope["query_string"], host)
        allowed = memo.get(key)
        if allowed is None:
            if len(memo) > _VERDICTS_MAX:
                memo.clear()
                memo[_HEADERS] = headers
            forwarded = None if host is None else host.decode("latin-1")
            query = scope["query_string"].decode("latin-1")
            allowed = memo[key] = access.refusal(active.claims, forwarded, query) is None
        # A refusal is the routed endpoint's to give: it logs the reason and renders the page.
        return headers if allowed else None
