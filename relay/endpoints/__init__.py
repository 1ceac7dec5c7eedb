"""HTTP endpoints: read the request, call a flow, shape the response. No SQL, no provider I/O."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from relay.cookies import CookiePolicy
from relay.flows import Flows
from relay.forwarded import AddressSet
from relay.ratelimit import LoginLimiter


@dataclass(frozen=True)
class Context:
    flows: Flows
    cookies: CookiePolicy
    proxies: AddressSet
    login_limiter: LoginLimiter
    metrics_readers: AddressSet


def context(request: Request) -> Context:
    ctx: Context = request.app.state.relay
    return ctx
