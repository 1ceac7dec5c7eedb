"""A provider that is down when the relay starts: the relay starts anyway, says why it is not
ready, backs off, and becomes ready when the provider is back."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest

from relay.errors import ProviderUnavailable
from relay.oidc.discovery import Discovery
from tests.provider import ISSUER, ProviderTransport, TestProvider

DISCOVERY = "/.well-known/openid-configuration"


@pytest.mark.parametrize("failure", ["connect", "timeout"])
def test_relay_starts_without_provider_and_recovers(
    make_relay: Any, provider: TestProvider, clock: Any, failure: str
) -> None:
    """/login answers 503 while discovery fails and /readyz says so in its body, staying 200
    (the replica still serves signed-in users); attempts are spaced by backoff; once the
    provider answers, logins start."""
    provider.behaviour.network_failures[DISCOVERY] = failure
    with make_relay() as relay:
        ready = relay.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["provider"].startswith("unavailable: discovery.")
        assert ready.json()["database"] == "ok"
        assert relay.get("/login").status_code == 503
        assert relay.get("/healthz").status_code == 200  # alive, just not ready

        provider.behaviour.network_failures.clear()
        # Within the backoff window nobody reaches the provider: not /login, not /readyz.
        before = provider.calls["discovery"]
        for _ in range(20):
            assert relay.get("/login").status_code == 503
        assert relay.get("/readyz").json()["provider"].startswith("unavailable:")
        assert provider.calls["discovery"] == before

        clock.advance(61)  # past any backoff step (capped at 60s)
        assert relay.get("/readyz").json()["provider"] == "ok"
        assert relay.get("/login").status_code == 302


def test_backoff_grows_between_attempts(provider: TestProvider, clock: Any) -> None:
    """Failed attempts wait 1s, 2s, 4s... (capped at 60s) before the next; calls inside the
    wait do not reach the provider."""
    provider.behaviour.network_failures[DISCOVERY] = "connect"

    async def go() -> list[float]:
        async with httpx2.AsyncClient(transport=ProviderTransport(provider)) as client:
            discovery = Discovery(client, ISSUER, ttl=3600, clock=clock)
            waits = []
            for _ in range(8):
                with pytest.raises(ProviderUnavailable):
                    await discovery.get()
                with pytest.raises(ProviderUnavailable):
                    await discovery.get()  # inside the wait: refused without a request
                waits.append(discovery.seconds_until_retry())
                clock.advance(discovery.seconds_until_retry())
            provider.behaviour.network_failures.clear()
            assert (await discovery.get()).issuer == ISSUER
            return waits

    assert asyncio.run(go()) == [1, 2, 4, 8, 16, 32, 60, 60]
    assert provider.calls["discovery"] == 1  # only the final, successful attempt got through


class SwallowsCancellation(httpx2.AsyncBaseTransport):
    """A provider connection that hangs, and that turns its cancellation into a connection
    error — as a transport's own task group can when a connect attempt is cancelled."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise httpx2.ConnectError("connect attempt cancelled", request=request) from None
        raise AssertionError("unreachable")


def test_shutdown_is_not_held_up_by_a_swallowed_cancellation(clock: Any) -> None:
    """Stopping the discovery warm-up ends it even when the cancellation comes back as a
    connection error, instead of backing off and retrying forever."""
    transport = SwallowsCancellation()

    async def go() -> None:
        async with httpx2.AsyncClient(transport=transport) as client:
            discovery = Discovery(client, ISSUER, ttl=3600, clock=clock)
            task = asyncio.create_task(discovery.warm_up())
            await transport.entered.wait()
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5)
            assert task in done
            assert task.cancelled()

    asyncio.run(go())
