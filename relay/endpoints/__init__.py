"""HTTP endpoints: read the request, call a flow, shape the response. No SQL, no provider I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from starlette.requests import Request

from relay.config import Config
from relay.cookies import CookiePolicy
from relay.flows import Flows
from relay.forwarded import AddressSet
from relay.gate import Gate
from relay.headers import IdentityHeaders
from relay.metrics import Metrics
from relay.oidc.discovery import Discovery
from relay.ratelimit import LoginLimiter
from relay.store.database import Database
from relay.store.invalidation import Listener
from relay.store.sessions import Sessions

INTERNAL = "relay.internal_port"  # scope key: the request came in on [server].internal_port
SESSION = "relay.session"  # scope key: the id hash of the session the shortcut answered for
TOKEN = "relay.token"  # scope key: the hash of the API caller's token the shortcut passed
# Scope key: the id hash the shortcut looked up and the table (or the memory of misses) had
# no session for; the endpoint it then calls does not look again.
ABSENT = "relay.absent"


@dataclass
class Lifecycle:
    """What the probes report about this process beyond its collaborators."""

    shutting_down: bool = False


@dataclass(frozen=True)
class Context:
    """Everything an endpoint may use, built once by the app's lifespan."""

    config: Config
    flows: Flows
    discovery: Discovery
    db: Database
    sessions: Sessions
    gate: Gate
    identity: IdentityHeaders
    clock: Callable[[], float]
    cookies: CookiePolicy
    proxies: AddressSet
    login_limiter: LoginLimiter
    metrics_readers: AddressSet
    metrics: Metrics
    listener: Listener | None = None  # PostgreSQL only
    lifecycle: Lifecycle = field(default_factory=Lifecycle)

    def now(self) -> int:
        return int(self.clock())


def context(request: Request) -> Context:
    ctx: Context = request.app.state.relay
    return ctx


def same_origin(request: Request, origin: str) -> bool:
    """Whether a POST that changes something (a sign-out, ending a session) came from the
    relay's own pages: the CSRF check of every such form."""
    # Browsers send Origin with a POST, but as "null" from a page whose Referrer-Policy is
    # no-referrer (ours); Sec-Fetch-Site, which no page can forge, then says where it came from.
    sent = request.headers.get("origin")
    if sent is not None and sent != "null":
        return sent == origin
    return request.headers.get("sec-fetch-site") in ("same-origin", "none")


# The relay's own forms post a field or two: a larger body is not one of them.
MAX_FORM = 1024


async def small_form(request: Request) -> dict[str, str]:
    """The fields of one of the relay's own small urlencoded forms (a session id, a subject),
    read without a multipart parser; {} for a body past MAX_FORM."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return {}
    return dict(parse_qsl(body.decode("utf-8", "replace")))
