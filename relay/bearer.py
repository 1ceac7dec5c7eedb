"""API callers at /auth: a request with ``Authorization: Bearer`` and no relay cookie is judged
by its token ([bearer]; off by default). No session row is written: the token is the session.

Which issuer's rules apply is read from the token's own (unverified) ``iss``, compared exactly
with the configured ones; everything after that is checked against that issuer only (its
keys, its audiences), so a token cannot borrow another issuer's key by its kid.

A token that passed is remembered until its expiry (``max_cached`` of them, oldest first out):
seen again, it costs a dictionary lookup and a comparison of times, as a cached session does
(endpoints/shortcut.py). An introspection answer is remembered for at most
``introspection_cache`` seconds, a refusal from introspection too (so a stream of bad tokens
does not become a stream of calls to the provider); a JWT that fails is not remembered, as
checking it again costs no I/O.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import structlog

from relay.claims import identity
from relay.config import Config
from relay.crypto import hash_id, short_hash
from relay.errors import InvalidBearer, ProviderBadResponse, ProviderError, ProviderUnavailable
from relay.oidc.access_tokens import KIND, Audience, introspect, validate_jwt
from relay.oidc.discovery import Discovery, endpoint_url
from relay.oidc.http import get_json
from relay.oidc.jwks import JwksCache
from relay.oidc.tokens import InvalidToken, token_header, unverified_claims
from relay.providers import Providers
from relay.store.records import ActiveSession, shared

log = structlog.get_logger("relay.bearer")

# RFC 6750 §2.1: "Bearer", one or more spaces, a b64token.
_AUTHORIZATION = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *$")
_RETRY_DISCOVERY = 5.0  # seconds an extra issuer's failed discovery is not tried again


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header; "" for a Bearer header that holds
    none a token can be (refused as malformed); None for no header or another scheme."""
    if authorization is None or authorization[:7].lower() != "bearer ":
        return None
    match = _AUTHORIZATION.match(authorization)
    return match.group(1) if match else ""


@dataclass(slots=True)
class _Seen:
    caller: ActiveSession
    not_before: int
    until: int  # the last second it passes (its exp with the clock skew)


@dataclass(frozen=True)
class _Issuer:
    """One issuer whose tokens pass: what they must say, and where its keys are."""

    expect: Audience
    keys: JwksCache
    jwks_uri: Callable[[], Awaitable[str]]


class BearerTokens:
    def __init__(
        self,
        config: Config,
        http: httpx2.AsyncClient,
        providers: Providers,
        clock: Callable[[], float],
    ) -> None:
        bearer, provider = config.bearer, config.provider
        self._config = config
        self._http = http
        self._discovery = providers.default.discovery  # introspection: the default provider's
        self._clock = clock
        self._max = bearer.max_cached
        self._introspection_ttl = bearer.introspection_cache
        self._seen: dict[str, _Seen] = {}
        self._inactive: dict[str, int] = {}  # introspection said no: until when to believe it
        self._in_flight: dict[str, asyncio.Future[_Seen]] = {}
        skew = provider.clock_skew
        algorithms = tuple(bearer.algorithms)
        at_jwt = bearer.typ == "at+jwt"
        self._login = Audience(
            provider.issuer, frozenset(bearer.audiences), algorithms, at_jwt, skew
        )
        # Every login provider's issuer (each tenant's, for a multi-tenant one), with its keys.
        self._issuers: dict[str, _Issuer] = {}
        for login in providers.all:
            locate = _jwks_uri_of(login.discovery)
            for issuer in login.tenant_issuers or {login.config.issuer}:
                expect = Audience(issuer, frozenset(bearer.audiences), algorithms, at_jwt, skew)
                self._issuers[issuer] = _Issuer(expect, login.jwks, locate)
        for extra in bearer.issuers:
            expect = Audience(
                extra.issuer, frozenset(extra.audiences), algorithms, extra.typ == "at+jwt", skew
            )
            keys = JwksCache(http, provider.jwks_refresh_cooldown, clock)
            locate = _Locator(http, extra.issuer, extra.jwks_uri, clock)
            self._issuers[extra.issuer] = _Issuer(expect, keys, locate)

    def seen(self, token: str, now: int) -> ActiveSession | None:
        """A token that passed before and still does, by its times alone; else None."""
        entry = self._seen.get(token)
        if entry is None or now > entry.until or now < entry.not_before:
            return None
        return entry.caller

    async def judge(self, token: str) -> ActiveSession:
        """The caller behind the token, or InvalidBearer (ProviderError when its issuer's keys
        or introspection cannot be reached: a 502-504, never a 401)."""
        if not token:
            raise InvalidBearer(f"{KIND}.malformed")
        now, id_hash = int(self._clock()), hash_id(token)
        structlog.contextvars.bind_contextvars(bearer=short_hash(id_hash))
        caller = self.seen(token, now)
        if caller is not None:
            return caller
        if token.count(".") == 2:
            entry = await self._jwt(token, id_hash, now)
        elif self._config.bearer.introspection:
            entry = await self._introspected(token, id_hash, now)
        else:
            raise InvalidBearer(f"{KIND}.not_a_jwt", "bearer.introspection is off")
        self._remember(token, entry)
        return entry.caller

    async def _jwt(self, token: str, id_hash: str, now: int) -> _Seen:
        try:
            header = token_header(token, KIND)
        except InvalidToken as exc:
            raise InvalidBearer(exc.reason, exc.detail) from exc
        issuer = self._issuers.get(_claimed_issuer(token))  # exactly, to the last "/"
        if issuer is None:
            raise InvalidBearer(f"{KIND}.unknown_issuer")
        jwks_uri = await issuer.jwks_uri()
        claims = await validate_jwt(token, header, issuer.keys, jwks_uri, issuer.expect, now=now)
        skew = issuer.expect.skew
        nbf = claims.get("nbf")
        not_before = int(nbf) - skew if isinstance(nbf, int | float) else 0
        return _Seen(_caller(id_hash, claims, now), not_before, int(claims["exp"]) + skew)

    async def _introspected(self, token: str, id_hash: str, now: int) -> _Seen:
        """One call to the provider per token at a time, its answer shared by every request
        that asked meanwhile."""
        refused_until = self._inactive.get(token)
        if refused_until is not None and now <= refused_until:
            raise InvalidBearer(f"{KIND}.inactive", "remembered")
        pending = self._in_flight.get(token)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Seen] = asyncio.get_running_loop().create_future()
        self._in_flight[token] = future
        try:
            entry = await self._ask(token, id_hash, now)
        except BaseException as exc:
            if isinstance(exc, InvalidBearer) and self._introspection_ttl and self._max:
                self._bounded(self._inactive)[token] = now + self._introspection_ttl
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._in_flight[token]
        future.set_result(entry)
        return entry

    async def _ask(self, token: str, id_hash: str, now: int) -> _Seen:
        metadata = await self._discovery.get()
        if metadata.introspection_endpoint is None:
            raise ProviderUnavailable(
                "introspection.no_endpoint",
                "bearer.introspection is on, but the provider advertises no introspection_endpoint",
            )
        provider = self._config.provider
        answer = await introspect(
            self._http, metadata.introspection_endpoint, provider, token, self._login, now=now
        )
        until = now + self._introspection_ttl
        exp = answer.get("exp")
        if isinstance(exp, int | float):
            until = min(until, int(exp) + self._login.skew)
        return _Seen(_caller(id_hash, answer, now), 0, until)

    def _remember(self, token: str, entry: _Seen) -> None:
        if self._max:
            self._bounded(self._seen)[token] = entry

    def _bounded(self, memory: dict[str, Any]) -> dict[str, Any]:
        """``memory``, with room for one more: the oldest entry goes first."""
        while memory and len(memory) >= self._max:
            del memory[next(iter(memory))]
        return memory


def _caller(id_hash: str, claims: dict[str, Any], now: int) -> ActiveSession:
    """The caller as the rules and the headers read a session: no row, no tokens kept."""
    return ActiveSession(
        id_hash=id_hash,
        subject=claims["sub"],
        claims=shared(identity(claims)),
        created_at=now,
        last_accessed_at=now,
        expires_at=now,
    )


def _jwks_uri_of(discovery: Discovery) -> Callable[[], Awaitable[str]]:
    async def locate() -> str:
        return (await discovery.get()).jwks_uri

    return locate


class _Locator:
    """An extra issuer's jwks_uri: configured, or read once from its discovery document
    (whose issuer must be identical, as for the login provider)."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        issuer: str,
        configured: str | None,
        clock: Callable[[], float],
    ) -> None:
        self._http = http
        self._issuer = issuer
        self._uri = configured
        self._clock = clock
        self._lock = asyncio.Lock()
        self._retry_at = float("-inf")

    async def __call__(self) -> str:
        if self._uri is not None:
            return self._uri
        async with self._lock:
            if self._uri is not None:
                return self._uri
            if self._clock() < self._retry_at:
                raise ProviderUnavailable("bearer_issuer.backoff", self._issuer)
            url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                doc = await get_json(self._http, url, "bearer_issuer")
                if doc.get("issuer") != self._issuer:
                    raise ProviderBadResponse("bearer_issuer.issuer_mismatch", self._issuer)
                self._uri = endpoint_url(doc, "jwks_uri")
            except ProviderError:
                self._retry_at = self._clock() + _RETRY_DISCOVERY
                raise
            return self._uri


def _claimed_issuer(token: str) -> str:
    """The iss a token claims, before anything about it is verified: it only chooses whose
    keys and rules the token is then held to."""
    issuer = unverified_claims(token).get("iss")
    return issuer if isinstance(issuer, str) else ""
