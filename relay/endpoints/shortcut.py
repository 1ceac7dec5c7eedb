"""The forward-auth shortcut: GET/HEAD /auth and /auth/redirect answered before routing, when
the session cache alone can vouch for the session (pure ASGI, inside RequestContext).

A proxy asks /auth for every request of every app behind it, so this is the relay's hot path;
Starlette's routing, request and response objects cost more than the answer itself. The
shortcut answers only the common case, a signed-in session the cache holds with no touch due,
with exactly the response the routed endpoint would give. Anything else (no cookie, a cache
miss, a touch to write, an untrusted cache) goes on to the routed endpoint, which does the
whole job: there is one place where a session is judged, ``Sessions``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from relay.cookies import cookie_id
from relay.crypto import hash_id, short_hash
from relay.endpoints import SESSION, Context, session
from relay.store.sessions import ActiveSession

_READS = frozenset({"GET", "HEAD"})


class AuthShortcut:
    def __init__(self, app: ASGIApp, prefix: str, memo_max: int) -> None:
        self.app = app
        self._paths = {
            prefix + "/auth": session.auth,
            prefix + "/auth/redirect": session.auth_redirect,
        }
        self._rendered: dict[str, tuple[ActiveSession, list[tuple[bytes, bytes]]]] = {}
        self._memo_max = memo_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._paths.get(scope.get("path", ""))
        if endpoint is not None and scope["type"] == "http" and scope["method"] in _READS:
            headers = self._answer(scope["app"].state.relay, scope)
            if headers is not None:
                scope["endpoint"] = endpoint  # for the metrics and the access line
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)

    def _answer(self, ctx: Context, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        for name, value in scope["headers"]:
            if name == b"cookie":
                cookie = cookie_id(value.decode("latin-1"), ctx.cookies.session_name)
                break
        else:
            return None
        if cookie is None:
            return None
        active = ctx.sessions.cached(hash_id(cookie), ctx.now())
        if active is None:
            return None
        # For the access line, if one is written (most successful checks are not logged):
        # cheaper in the scope than bound to the log context on every check.
        scope[SESSION] = short_hash(active.id_hash)
        # The cache hands out the same ActiveSession until the session changes (a touch, a
        # new read): its headers are rendered once per change, not once per request.
        memo = self._rendered.get(active.id_hash)
        if memo is not None and memo[0] is active:
            return memo[1]
        if len(self._rendered) >= self._memo_max:
            # As many as the cache holds: past that, the entries are for sessions it has let
            # go of. Start afresh rather than keep them (and their sessions) alive.
            self._rendered.clear()
        headers = session.identity_headers(active)
        self._rendered[active.id_hash] = (active, headers)
        return headers
