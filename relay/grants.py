"""Ending the provider's grant with the relay's session: when a session ends by a sign-out,
"sign out everywhere else", or an operator, its refresh token is revoked at the provider
(RFC 7009), so that the grant cannot quietly sign the person back in, here or anywhere the
token leaked to. Back-channel logout needs none (the provider ended it), nor does a refresh
the provider refused (the grant is gone already).

Best effort, by design: the relay's session has ended before this runs, and a provider that
is down or slow does not keep a person from signing out. Each failure is logged, with the
session's short hash; the grant then lives until the provider expires it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import httpx2
import structlog

from relay.config import ProviderConfig
from relay.crypto import short_hash
from relay.errors import RelayError
from relay.oidc.client import revoke_refresh_token
from relay.oidc.discovery import Discovery
from relay.store.revocation import Ended

log = structlog.get_logger("relay.grants")

_AT_ONCE = 4  # revocations in flight at once, for a person with many sessions
_TIMEOUT = 5.0  # seconds the whole batch may take, at most, before the answer goes out


class Grants:
    def __init__(
        self, http: httpx2.AsyncClient, discovery: Discovery, provider: ProviderConfig
    ) -> None:
        self._http = http
        self._discovery = discovery
        self._provider = provider
        self._enabled = provider.revoke_refresh_tokens

    async def revoke(self, ended: Iterable[Ended]) -> None:
        """Revoke the refresh tokens of these ended sessions at the provider, where it has a
        revocation endpoint; never raises."""
        tokens = [(e.id_hash, e.refresh_token) for e in ended if e.refresh_token]
        if not self._enabled or not tokens:
            return
        try:
            metadata = await self._discovery.get()
        except RelayError as exc:
            log.warning("grants.not_revoked", reason=exc.reason, sessions=len(tokens))
            return
        endpoint = metadata.revocation_endpoint
        if endpoint is None:
            return  # the provider offers no way: its grants expire on its own terms
        gate = asyncio.Semaphore(_AT_ONCE)

        async def one(id_hash: str, token: str) -> None:
            async with gate:
                try:
                    await revoke_refresh_token(self._http, endpoint, self._provider, token)
                except RelayError as exc:
                    log.warning(
                        "grants.not_revoked",
                        reason=exc.reason,
                        detail=exc.detail or None,
                        session=short_hash(id_hash),
                    )

        try:
            async with asyncio.timeout(_TIMEOUT):
                await asyncio.gather(*(one(id_hash, token) for id_hash, token in tokens))
        except TimeoutError:
            log.warning("grants.not_revoked", reason="revocation.timeout", sessions=len(tokens))
