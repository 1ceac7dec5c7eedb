"""A small helper for Python (ASGI) apps: "who is this user?" answered in one place.

Behind a proxy doing forward-auth, read the identity the proxy set::

    identity = identity_from_headers(request.headers)   # None when not signed in

Without such a proxy, wrap the app: every request's relay cookie is checked against the
relay's /auth, the identity lands in ``scope["state"]["relay_identity"]``, and a browser
without a session is sent to the relay's login (API requests, and clients asking for JSON, get
401, as the relay decides it: relay/forwarded.py ``is_navigation``)::

    app = RelayGuard(
        app,
        relay_url="https://auth.example.com",
        skip_paths=["/healthz"],        # exactly these paths pass without a session
        skip_prefixes=["/static/"],     # and everything under these
    )

Only trust X-Auth-Request-* headers when the proxy in front of the app sets them on every
request (the snippets in deploy/ do); anyone who can reach the app directly can forge them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlencode

import httpx2
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.forwarded import AddressSet, is_navigation


@dataclass(frozen=True)
class Identity:
    subject: str
    user: str
    email: str
    groups: tuple[str, ...]


def identity_from_headers(headers: Mapping[str, str]) -> Identity | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    subject = lowered.get("x-auth-request-subject", "")
    if not subject:
        return None
    groups = lowered.get("x-auth-request-groups", "")
    return Identity(
        subject=subject,
        user=lowered.get("x-auth-request-user", "") or subject,
        email=lowered.get("x-auth-request-email", ""),
        # The relay sends each group exactly, comma-separated, none with a comma or a space
        # at either end (relay/exact.py): split, never strip or unescape, and a group reads
        # as the relay's rules judged it.
        groups=tuple(g for g in groups.split(",") if g),
    )


_NO_PROXIES = AddressSet(())

# What the relay said about a cookie: who it is, no session (401), or not allowed (403).
Verdict = Identity | Literal["signed_out", "forbidden"]


class RelayUnavailable(Exception):
    """The relay could not be asked, or answered with trouble of its own (5xx, 429, ...)."""


class RelayGuard:
    """Pure ASGI middleware that lets only signed-in users through, except on skip paths."""

    def __init__(
        self,
        app: ASGIApp,
        relay_url: str,
        *,
        cookie_name: str = "relay_session",
        skip_paths: Iterable[str] = (),
        skip_prefixes: Iterable[str] = (),
        cache_ttl: float = 1.0,
        cache_max_entries: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx2.AsyncBaseTransport | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.app = app
        self.relay_url = relay_url.rstrip("/")
        # The relay's [session] cookie_name; it adds __Host- when it may, so both are read.
        self._cookie_names = frozenset({cookie_name, "__Host-" + cookie_name})
        self._skip_paths = frozenset(_checked_rule(p, prefix=False) for p in skip_paths)
        self._skip_prefixes = tuple(_checked_rule(p, prefix=True) for p in skip_prefixes)
        self.cache = AnswerCache(cache_ttl, cache_max_entries, clock)
        self._in_flight: dict[bytes, asyncio.Task[Verdict]] = {}
        self._client = httpx2.AsyncClient(transport=transport, timeout=timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self._skipped(scope):
            scope.setdefault("state", {})["relay_identity"] = None
            await self.app(scope, receive, send)
            return
        try:
            verdict = await self._verdict(_relay_cookies(scope, self._cookie_names))
        except RelayUnavailable:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1011})
                return
            response = JSONResponse({"error": "relay_unavailable"}, status_code=502)
            await response(scope, receive, send)
            return
        if isinstance(verdict, Identity):
            scope.setdefault("state", {})["relay_identity"] = verdict
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if verdict == "forbidden":
            # Signed in, but the relay's access rules keep this user out: a login would not help.
            await JSONResponse({"error": "forbidden"}, status_code=403)(scope, receive, send)
            return
        # The relay's own test (no proxy in between: the method is the request's own).
        if is_navigation(Request(scope), _NO_PROXIES):
            login = self.relay_url + "/login?" + urlencode({"rd": str(URL(scope=scope))})
            await RedirectResponse(login, status_code=302)(scope, receive, send)
            return
        await JSONResponse({"error": "not_signed_in"}, status_code=401)(scope, receive, send)

    def _skipped(self, scope: Scope) -> bool:
        path = _plain_path(scope)
        if path is None:
            return False
        return path in self._skip_paths or path.startswith(self._skip_prefixes)

    async def _verdict(self, cookie: str) -> Verdict:
        if not cookie:
            # /auth reads nothing but the session cookie: without one it can only say 401.
            return "signed_out"
        key = hashlib.sha256(cookie.encode("latin-1")).digest()
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        task = self._in_flight.get(key)
        # (A task of another event loop, left by a request cancelled as its loop closed, is
        # not one this loop can wait for.)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            # One /auth call per cookie at a time: a page's burst of requests shares it.
            task = asyncio.ensure_future(self._ask(key, cookie))
            self._in_flight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        # Shielded: a client that goes away does not cancel the answer others wait for.
        return await asyncio.shield(task)

    def _forget(self, key: bytes, done: asyncio.Task[Verdict]) -> None:
        if self._in_flight.get(key) is done:
            del self._in_flight[key]

    async def _ask(self, key: bytes, cookie: str) -> Verdict:
        try:
            response = await self._client.get(self.relay_url + "/auth", headers={"cookie": cookie})
        except httpx2.HTTPError as exc:
            raise RelayUnavailable from exc
        verdict: Verdict
        if response.status_code == 200:
            identity = identity_from_headers(response.headers)
            verdict = "signed_out" if identity is None else identity
        elif response.status_code == 401:
            verdict = "signed_out"
        elif response.status_code == 403:
            verdict = "forbidden"
        else:
            # The relay's own trouble (a database outage is a 503) is not a verdict on the
            # user: never sign anyone out for it, and never remember it.
            raise RelayUnavailable(response.status_code)
        self.cache.put(key, verdict)
        return verdict


class AnswerCache:
    """The relay's recent verdicts, keyed by the SHA-256 of the relay cookies (never the
    cookies themselves), for ``ttl`` seconds, at most ``max_entries``, least recently used out
    first. A cached 200 is trusted for ``ttl``: that is how much later this app sees a logout
    or revocation than the relay does, so the default (1 s) stays within the relay's own
    1-second bound for ending a session everywhere. ``ttl = 0`` turns the cache off."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        if ttl < 0 or max_entries < 0:
            raise ValueError("cache_ttl and cache_max_entries must not be negative")
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Verdict]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Verdict | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, verdict = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return verdict

    def put(self, key: bytes, verdict: Verdict) -> None:
        if self._ttl == 0 or self._max == 0:
            return
        self._entries[key] = (self._clock() + self._ttl, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


def _relay_cookies(scope: Scope, names: frozenset[str]) -> str:
    """Only the relay's cookies, from every Cookie header (HTTP/2 may send several): the app's
    other cookies are none of the relay's business, and the cache key then covers exactly
    what the relay is shown."""
    kept = []
    for name, value in scope["headers"]:
        if name != b"cookie":
            continue
        for chunk in value.decode("latin-1").split(";"):
            key, sep, content = chunk.partition("=")
            if sep and key.strip() in names:
                kept.append(f"{key.strip()}={content.strip()}")
    return "; ".join(kept)


# Characters after which servers, frameworks or file systems may see a different path than the
# one matched here: separators (\), parameters (;), escapes left after decoding (%: decoded
# twice downstream), and control characters.
_AMBIGUOUS = re.compile(r"[\x00-\x1f\x7f\\;%]")


def _plain_path(scope: Scope) -> str | None:
    """The request's path if nothing downstream could read it as another path, else None.

    A skip rule is matched against this only, so ``/static/../admin``, ``/static//x``,
    ``/static/%2e%2e/admin``, ``/healthz.`` and the like are never skipped: they are guarded
    like any other path (not refused: the app may still serve them to signed-in users)."""
    path: str = scope.get("path", "")
    raw = scope.get("raw_path")
    if raw is not None:
        # The path as the server read it must be the bytes it received, decoded once, with no
        # encoded separator an app routing on raw_path would see differently.
        try:
            raw_text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        lowered = raw_text.lower()
        if "%2f" in lowered or "%5c" in lowered or unquote(raw_text) != path:
            return None
    if not path.startswith("/") or _AMBIGUOUS.search(path):
        return None
    segments = path[1:].split("/")
    for index, segment in enumerate(segments):
        if segment == "":
            if index != len(segments) - 1:  # "//": only a trailing slash may be empty
                return None
        elif segment.endswith((".", " ")):  # ".", "..", and trailing dots some systems drop
            return None
    return path


def _checked_rule(rule: str, *, prefix: bool) -> str:
    """A skip rule must itself be a plain path; a prefix ends with "/" so that "/static/"
    does not also skip "/static-admin"."""
    plain = _plain_path({"path": rule})
    if plain is None or (prefix and not rule.endswith("/")) or (prefix and rule == "/"):
        raise ValueError(
            f"skip rule {rule!r}: a plain absolute path (no //, ., .., %, ;, \\)"
            + (", ending in / and not / itself" if prefix else "")
        )
    return plain
