"""Per-client rate limiting of /login, with the ``limits`` library (in-process memory).

Each relay process counts on its own: with N processes a client gets up to N times the rate.
That bounds a flood, which is the point; the global pending cap bounds the table.
"""

from __future__ import annotations

from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter


class LoginLimiter:
    def __init__(self, rate: str) -> None:
        self._item = parse(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def allow(self, client: str) -> bool:
        return await self._limiter.hit(self._item, "login", client)
