"""Per-client rate limiting of /login, with the ``limits`` library.

The counters live in memory by default, so each relay process counts on its own: with N
replicas a client gets up to N times the rate. ``[limits] storage_uri`` points them at storage
the replicas share (Redis: "redis://host:6379"). If that storage fails, a login is let through
and the failure logged: the pending-login caps in the database still bound a flood, and a
limiter outage must not become a login outage.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

import structlog
from limits import parse
from limits.aio.storage import RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

log = structlog.get_logger("relay.ratelimit")

KEY_PREFIX = "oidc-relay"


def client_bucket(address: str, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """What the login limits count as one client: the address's network of ``ipv4_prefix`` or
    ``ipv6_prefix`` bits ("2001:db8:1:2::/64"), or the address itself at full length. An
    IPv4-mapped IPv6 address counts as its IPv4 address; anything else is its own bucket."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = ipv4_prefix if ip.version == 4 else ipv6_prefix
    if bits == ip.max_prefixlen:
        return str(ip)  # as before prefixes: counters and pending rows keep their keys
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


class LoginLimiter:
    def __init__(
        self, rate: str, storage_uri: str = "memory://", *, key_prefix: str = KEY_PREFIX
    ) -> None:
        self._item = parse(rate)
        self._close: Callable[[], Awaitable[None]] | None = None
        if storage_uri.startswith("memory://"):
            storage = storage_from_string("async+memory://")
        else:
            # redis-py, through a pool the relay owns (so it can close it); a Redis that cannot
            # answer within a second is skipped, not waited on.
            from redis.asyncio import ConnectionPool

            pool = ConnectionPool.from_url(storage_uri, socket_connect_timeout=1, socket_timeout=1)
            self._close = pool.aclose
            storage = RedisStorage(
                "async+" + storage_uri,
                connection_pool=pool,  # type: ignore[arg-type]  # passed on to redis-py as is
                implementation="redispy",
                key_prefix=key_prefix,
            )
        if not isinstance(storage, Storage):
            raise TypeError(f"not an asyncio storage: {storage_uri}")
        self._limiter = SlidingWindowCounterRateLimiter(storage)

    async def allow(self, client: str) -> bool:
        try:
            return await self._limiter.hit(self._item, "login", client)
        except Exception as exc:  # noqa: BLE001 - any storage failure: fail open, said loudly
            log.error("ratelimit.storage_failed", error=type(exc).__name__, detail=str(exc)[:200])
            return True

    async def close(self) -> None:
        if self._close is not None:
            await self._close()
