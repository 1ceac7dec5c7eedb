"""Refreshing a session's access token (RFC 6749 §6, and OIDC Core §12.2 for an ID token that
comes with it), once per session however many requests and replicas ask at the same moment.

``Gate.session`` hands every live session to ``Refresher.fresh``. Nothing happens unless a
refresh is due (``Sessions.refresh_due``: the access token has expired or expires within
[refresh] margin, and a refresh token is stored). Then:

- In this process, one refresh per session at a time: the first request starts it as a task,
  the requests that come meanwhile share it (single flight).
- Across replicas, that task first claims the row with a guarded UPDATE of its refresh lease
  (``RefreshLeases.claim_refresh``, store/leases.py), never a row lock held across the
  provider call.
- A replica that does not get the claim answers with the access token it has while that is
  valid; once it has expired, it waits (at most ``WAIT`` seconds) for the winner and answers
  with what the row then holds.
- The request that starts a refresh waits for it at most provider.timeout, then answers with
  what the session has (as in an outage, below). The refresh goes on: once the grant is sent
  its answer is awaited up to ``PATIENCE`` times provider.timeout and stored when it comes,
  for the provider may have rotated the refresh token already.
- ``invalid_grant`` ends the session on every replica: 401 next. Unless an earlier grant for
  the session was sent and never answered (timed out, the connection dropped, the replica
  gone; counted in the row): then the provider may have rotated the token in that one, and
  the invalid_grant is ambiguous (``refresh.ambiguous``). The token is dead either way; the
  session answers with what it has until outage_grace past its access token's expiry, then
  tries once more, and that invalid_grant ends it.
- Any other failure (the provider unreachable, slow, answering 5xx or nonsense, refusing the
  client; a refreshed ID token that fails validation) changes nothing: the session answers as
  before until [refresh] outage_grace past its access token's expiry, 503 after. No replica
  tries again before [refresh] retry_interval (the lease is held until then).

Over ~300 lines: the rules above are one state machine (claim, ask, store or release, and the
outcomes that are unknown), and each branch's reason sits beside it; the lease's SQL is in
store/leases.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx2
import structlog

from relay.claims import identity
from relay.config import Config
from relay.crypto import SealError, short_hash
from relay.errors import (
    BadRequest,
    DatabaseUnavailable,
    ProviderTimeout,
    ProviderUnavailable,
    RelayError,
)
from relay.metrics import Metrics
from relay.oidc.client import InvalidGrant, Refreshed, fetch_userinfo, refresh_tokens
from relay.oidc.discovery import ProviderMetadata
from relay.oidc.http import answer_lost
from relay.oidc.tokens import (
    InvalidToken,
    expectations,
    unverified_claims,
    validate_refreshed_id_token,
)
from relay.providers import Provider, Providers
from relay.store.records import ActiveSession, RefreshClaim
from relay.store.sessions import Sessions

log = structlog.get_logger("relay.refresh")

WAIT = 3.0  # seconds a request whose token expired waits for another replica's refresh
_POLL = 0.05  # seconds between looks at the row while waiting
_MEMORY = 10_000  # sessions whose "not before" this process remembers
# A sent grant's answer is awaited this many times provider.timeout: a provider slower than
# provider.timeout has usually rotated the refresh token by the time it answers, and giving
# up on the answer loses the new token (one minute by default). Nobody waits on it meanwhile.
PATIENCE = 6


class Refresher:
    def __init__(
        self,
        *,
        config: Config,
        http: httpx2.AsyncClient,
        providers: Providers,
        sessions: Sessions,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._http = http
        self._providers = providers
        self._sessions = sessions
        self._metrics = metrics
        self._clock = clock
        # The lease outlasts an attempt, so no other replica can start while this one may
        # still be using the refresh token (a rotated token used twice is, to many providers,
        # a stolen one: they revoke the whole grant). Discovery and the claims (JWKS,
        # userinfo) are each cut off at provider.timeout; the grant at PATIENCE times that;
        # the claim and the store by the database's (its timeout and one second of grace
        # each); and two seconds for whole-second clocks.
        timeout = config.provider.timeout
        self._attempt_timeout = timeout
        self._grant_timeout = PATIENCE * timeout
        # Connecting is not waited for longer: until then the provider has done nothing.
        self._grant_http_timeout = httpx2.Timeout(timeout, read=self._grant_timeout)
        self._lease = (2 + PATIENCE) * timeout + 2 * (config.database.timeout + 1) + 2
        self._inflight: dict[str, asyncio.Task[ActiveSession | None]] = {}
        # Sessions this process will not try to refresh again before a time: after its own
        # failure, or while another replica's lease runs. Saves a database round trip per
        # request while the provider is down.
        self._not_before: dict[str, int] = {}

    def now(self) -> int:
        return int(self._clock())

    async def fresh(self, session: ActiveSession) -> ActiveSession | None:
        """The session with a usable access token: as it is, or refreshed when due. None when
        the refresh ended it (invalid_grant); ProviderUnavailable when its token is past the
        outage grace and cannot be refreshed now."""
        now = self.now()
        if not self._sessions.refresh_due(session, now):
            return session
        id_hash = session.id_hash
        task = self._inflight.get(id_hash)
        if task is None:
            if now < self._not_before.get(id_hash, 0):
                return self._judge(session, now)
            task = asyncio.create_task(self._refresh(session), name="refresh")
            self._inflight[id_hash] = task
            task.add_done_callback(lambda _: self._inflight.pop(id_hash, None))
            # Shielded: a client that goes away does not cancel the refresh others share, nor
            # does this one giving up on a slow provider.
            try:
                result = await asyncio.wait_for(asyncio.shield(task), self._attempt_timeout)
            except TimeoutError:
                result = session
        elif not _expired(session, now):
            return session  # being refreshed; the token it has still works meanwhile
        else:
            try:
                result = await asyncio.wait_for(asyncio.shield(task), WAIT)
            except TimeoutError:
                result = session
        if result is None:
            return None
        return self._judge(result, self.now())

    def _judge(self, session: ActiveSession, now: int) -> ActiveSession:
        """A session whose refresh did not happen: good until outage_grace past expiry."""
        expires = session.access_expires_at
        if expires is None or not session.has_refresh_token:
            return session
        if now < expires + self._config.refresh.outage_grace:
            return session
        raise ProviderUnavailable(
            "refresh.past_grace",
            public_message="The identity provider is unavailable, and your sign-in needs it "
            "now. Please try again in a few minutes.",
        )

    async def _refresh(self, session: ActiveSession) -> ActiveSession | None:
        id_hash, now = session.id_hash, self.now()
        try:
            claim = await self._sessions.leases.claim_refresh(id_hash, now, self._lease)
        except DatabaseUnavailable as exc:
            self._failed(session, exc.reason, "", now + self._config.refresh.retry_interval)
            return session
        except SealError:
            # Sealed under a secret no longer configured: it can never be sent, so the session
            # goes on without one (as with a provider that issues none), not into a 503.
            await self._sessions.leases.forget_refresh_token(id_hash)
            self._failed(session, "refresh.token_unreadable", "", now)
            return await self._sessions.reload(id_hash, self.now())
        if claim is None:
            return await self._claimed_elsewhere(session, now)
        lost = False  # whether the provider may have acted on a grant whose answer never came
        try:
            # The provider that signed the session in (several: by its ID token's issuer).
            provider = self._providers.of_id_token(claim.id_token)
            if provider is None:
                raise ProviderUnavailable(
                    "refresh.provider_gone", "the session's provider is no longer configured"
                )
            async with asyncio.timeout(self._attempt_timeout):
                metadata = await provider.discovery.get()
            # Sent, the grant may rotate the refresh token whether or not its answer comes
            # back: the answer is awaited longer, and stored before anything else can fail.
            lost = True
            async with asyncio.timeout(self._grant_timeout):
                tokens = await refresh_tokens(
                    self._http,
                    metadata=metadata,
                    provider=provider.config,
                    refresh_token=claim.refresh_token,
                    timeouts=self._grant_http_timeout,
                )
        except InvalidGrant:
            if claim.unsettled:
                return await self._ambiguous(session, claim)
            await self._end(session)
            return None
        except TimeoutError:
            failure: RelayError = ProviderTimeout("refresh.timeout")
        except RelayError as exc:
            failure = exc
            lost = lost and answer_lost(exc)
        else:
            return await self._received(session, claim, provider, metadata, tokens)
        retry_at = self.now() + self._config.refresh.retry_interval
        unsettled = claim.unsettled + int(lost)
        with contextlib.suppress(DatabaseUnavailable):  # the lease then runs out on its own
            await self._sessions.leases.release_refresh(
                id_hash, claim, retry_at, unsettled=unsettled
            )
        self._failed(session, failure.reason, failure.detail, retry_at, failure)
        return session

    async def _ambiguous(self, session: ActiveSession, claim: RefreshClaim) -> ActiveSession:
        """invalid_grant after a grant whose answer never came: the provider may have rotated
        the refresh token then (the new one lost with the answer), or revoked the grant. The
        token is dead either way, but the user did nothing to be logged out for: the session
        goes on with what it has until outage_grace past its access token's expiry (as in an
        outage), then tries once more; with nothing unanswered left, that invalid_grant ends
        it."""
        now = self.now()
        expires = session.access_expires_at if session.access_expires_at is not None else now
        retry_at = max(
            now + self._config.refresh.retry_interval,
            expires + self._config.refresh.outage_grace,
        )
        with contextlib.suppress(DatabaseUnavailable):  # then the lease runs out, and it repeats
            await self._sessions.leases.release_refresh(
                session.id_hash, claim, retry_at, unsettled=0
            )
        self._remember(session.id_hash, retry_at)
        self._metrics.refreshes.labels(result="ambiguous").inc()
        log.warning(
            "refresh.ambiguous",
            reason="token.invalid_grant",
            unanswered=claim.unsettled,
            session=short_hash(session.id_hash),
            retry_in=retry_at - now,
        )
        return session

    async def _received(
        self,
        session: ActiveSession,
        claim: RefreshClaim,
        provider: Provider,
        metadata: ProviderMetadata,
        tokens: Refreshed,
    ) -> ActiveSession | None:
        """Store what the token endpoint answered, the new refresh token above all, with the
        claims it gives when they pass; claims that do not pass keep the old ones (logged and
        counted), unless they name another user, which ends the session."""
        rejected: RelayError | None = None
        try:
            async with asyncio.timeout(self._attempt_timeout):
                answer = await self._answer(session, claim, provider, metadata, tokens)
        except TimeoutError:
            rejected = ProviderTimeout("refresh.claims_timeout")
        except InvalidToken as exc:
            if exc.reason in _ANOTHER_USER:
                # OIDC Core §12.2: a refresh never changes who is signed in. An answer that
                # says otherwise is not this session's any more.
                await self._end(session, exc.reason)
                return None
            rejected = exc
        except RelayError as exc:  # userinfo down, slow, or naming another sub
            rejected = exc
        if rejected is not None:
            answer = _Answer(replace(tokens, id_token=None), session.claims, claim.nonce)
        stored = await self._store(session, claim, answer, claims_passed=rejected is None)
        if rejected is not None:
            self._failed(session, rejected.reason, rejected.detail, self.now(), rejected)
        return stored

    async def _answer(
        self,
        session: ActiveSession,
        claim: RefreshClaim,
        issuer: Provider,
        metadata: ProviderMetadata,
        tokens: Refreshed,
    ) -> _Answer:
        """The claims the answer gives the session; raises when they do not pass."""
        provider = issuer.config
        # The session's ID token was validated when it came, and has been sealed since.
        original = unverified_claims(claim.id_token) if claim.id_token else {}
        nonce = claim.nonce or _string(original.get("nonce"))
        id_claims = original
        if tokens.id_token is not None:
            expect = expectations(metadata, provider, self.now(), nonce)
            first = {"sub": session.subject, **{k: original.get(k) for k in ("iss", "auth_time")}}
            id_claims = await validate_refreshed_id_token(
                tokens.id_token, issuer.jwks, expect, first
            )
        info: dict[str, Any] | None = None
        if provider.fetch_userinfo and metadata.userinfo_endpoint:
            info = await fetch_userinfo(self._http, metadata.userinfo_endpoint, tokens.access_token)
            # OIDC Core §5.3.2, as at login.
            if info.get("sub") != session.subject:
                raise BadRequest("userinfo.sub_mismatch")
        # The claims as a login would derive them now; with nothing new, as they were.
        claims = session.claims
        if tokens.id_token is not None or info is not None:
            claims = identity((info or {}) | id_claims)
        return _Answer(tokens, claims, nonce)

    async def _store(
        self, session: ActiveSession, claim: RefreshClaim, answer: _Answer, *, claims_passed: bool
    ) -> ActiveSession | None:
        tokens = answer.tokens
        stored = await self._sessions.leases.store_refreshed(
            session,
            claim,
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            id_token=tokens.id_token,
            expires_in=tokens.expires_in,
            claims=answer.claims,
            nonce=answer.nonce,
            now=self.now(),
        )
        if stored is None:
            # Ended meanwhile (a logout), or our lease ran out: the table knows which.
            return await self._sessions.reload(session.id_hash, self.now())
        if claims_passed:
            self._succeeded(stored, tokens)
        return stored

    async def _claimed_elsewhere(self, session: ActiveSession, now: int) -> ActiveSession | None:
        """Another replica holds the lease, or has already refreshed the row."""
        id_hash = session.id_hash
        current = await self._sessions.reload(id_hash, now)
        if current is None or not self._sessions.refresh_due(current, now):
            return current  # ended, or refreshed elsewhere
        lease = await self._sessions.leases.refresh_lease(id_hash)
        if not _expired(current, now):
            self._remember(id_hash, lease or now + 1)
            return current
        # Expired: wait a little for the winner (its result, or its failure moving the lease
        # on), then answer with what the row holds.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while loop.time() < deadline and lease is not None and lease > self.now():
            await asyncio.sleep(_POLL)
            if await self._sessions.leases.refresh_lease(id_hash) != lease:
                break
        current = await self._sessions.reload(id_hash, self.now())
        if current is not None and self._sessions.refresh_due(current, self.now()):
            lease = await self._sessions.leases.refresh_lease(id_hash)
            self._remember(id_hash, lease or self.now() + 1)
        return current

    async def _end(self, session: ActiveSession, reason: str = "token.invalid_grant") -> None:
        await self._sessions.revocation.delete(session.id_hash)  # announced: every replica drops it
        self._metrics.refreshes.labels(result="ended").inc()
        log.warning(
            "refresh.failed",
            reason=reason,
            session=short_hash(session.id_hash),
            ended=True,
        )

    def _succeeded(self, session: ActiveSession, tokens: Refreshed) -> None:
        self._not_before.pop(session.id_hash, None)
        self._metrics.refreshes.labels(result="succeeded").inc()
        log.info(
            "refresh.succeeded",
            session=short_hash(session.id_hash),
            expires_in=tokens.expires_in,
            rotated=tokens.refresh_token is not None,
            id_token=tokens.id_token is not None,
        )
        if tokens.expires_in is not None and self._sessions.refresh_due(session, self.now()):
            # The provider's tokens live shorter than the margin: refresh when one expires,
            # not on every request.
            self._remember(session.id_hash, self.now() + tokens.expires_in)
            log.warning(
                "refresh.lifetime_below_margin",
                expires_in=tokens.expires_in,
                margin=self._config.refresh.margin,
            )

    def _failed(
        self,
        session: ActiveSession,
        reason: str,
        detail: str,
        retry_at: int,
        exc: RelayError | None = None,
    ) -> None:
        self._remember(session.id_hash, retry_at)
        result = "rejected" if isinstance(exc, (InvalidToken, BadRequest)) else "failed"
        self._metrics.refreshes.labels(result=result).inc()
        log.warning(
            "refresh.failed",
            reason=reason,
            detail=detail or None,
            session=short_hash(session.id_hash),
            retry_in=max(retry_at - self.now(), 0),
        )

    def _remember(self, id_hash: str, not_before: int) -> None:
        if len(self._not_before) >= _MEMORY:
            now = self.now()
            self._not_before = {k: v for k, v in self._not_before.items() if v > now}
            if len(self._not_before) >= _MEMORY:
                self._not_before.clear()
        self._not_before[id_hash] = not_before


# A refreshed ID token for another user or from another issuer: the session ends.
_ANOTHER_USER = frozenset({"id_token.sub_changed", "id_token.iss_changed"})


@dataclass(frozen=True)
class _Answer:
    tokens: Refreshed
    claims: dict[str, Any]
    nonce: str | None  # the login's, kept with the session for the next refresh's §12.2 check


def _expired(session: ActiveSession, now: int) -> bool:
    return session.access_expires_at is not None and session.access_expires_at <= now


def _string(value: object) -> str | None:
    return value if isinstance(value, str) else None
