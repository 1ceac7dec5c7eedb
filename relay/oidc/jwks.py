"""The provider's signing keys, cached; refetched on an unknown kid at most once per cooldown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import httpx2
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet, KeySetSerialization

from relay.errors import ProviderBadResponse
from relay.oidc.http import get_json


class JwksCache:
    def __init__(
        self, client: httpx2.AsyncClient, cooldown: int, clock: Callable[[], float]
    ) -> None:
        self._client = client
        self._cooldown = cooldown
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: KeySet | None = None
        self._version = 0  # bumped by every fetch: waiters see that someone else fetched
        self._refetched_at = float("-inf")  # the last fetch an unknown kid caused

    async def candidates(self, jwks_uri: str, kid: str | None) -> list[Key]:
        """Signing keys that may have made a token with this kid (any signing key without one)."""
        if self._keys is None:
            await self._fetch(jwks_uri, self._version, unknown_kid=False)
        found = _matching(self._keys, kid)
        if not found and kid is not None:
            # A kid we have not seen: the provider may have rotated its keys.
            await self._fetch(jwks_uri, self._version, unknown_kid=True)
            found = _matching(self._keys, kid)
        return found

    async def _fetch(self, jwks_uri: str, seen: int, *, unknown_kid: bool) -> None:
        async with self._lock:
            if self._version != seen:
                return  # another request fetched while we waited
            if unknown_kid:
                if self._clock() - self._refetched_at < self._cooldown:
                    return  # a kid nobody knows must not become a refetch storm
                self._refetched_at = self._clock()
            doc = await get_json(self._client, jwks_uri, "jwks")
            try:
                self._keys = KeySet.import_key_set(cast(KeySetSerialization, doc))
            except (JoseError, KeyError, TypeError, ValueError) as exc:
                raise ProviderBadResponse("jwks.invalid", type(exc).__name__) from exc
            finally:
                self._version += 1


def _matching(keys: KeySet | None, kid: str | None) -> list[Key]:
    if keys is None:
        return []
    usable = [k for k in keys if k.get("use") in (None, "sig")]
    if kid is None:
        return usable
    return [k for k in usable if k.kid == kid]
