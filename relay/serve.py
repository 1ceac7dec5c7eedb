"""`relay serve`: its listening sockets, uvicorn, and a stop that drops no request.

The sockets are bound here, before anything starts, so a busy port is one line naming the key
rather than a started-then-failed server. With [server] internal_port the probes and /metrics
get a socket of their own (see relay/endpoints/probes.py), and with reuse_port several
`relay serve` processes on one host share the public port, the kernel spreading connections
between them (SO_REUSEPORT): one process per core.

On SIGTERM the replica first says so on /readyz (503 "shutting_down") and keeps serving for
[server] shutdown_delay, so a load balancer polling it stops sending new requests; then
uvicorn stops accepting, lets requests in flight finish (up to [server] shutdown_timeout),
and the lifespan closes the database and the background tasks.
"""

from __future__ import annotations

import socket
import sys
import time

import structlog
import uvicorn

from relay.config import Config
from relay.endpoints import Lifecycle
from relay.protocol import bounded_http

log = structlog.get_logger("relay.serve")


class ListenError(Exception):
    """A socket could not be bound; the message names the key."""


def bind(host: str, port: int, key: str, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(
            f"cannot listen on {host}:{port} ({key}): {exc.strerror or exc}; "
            "is another process using it?"
        ) from None
    sock.set_inheritable(True)
    return sock


class RelayServer(uvicorn.Server):
    """uvicorn's server, with a drain period between the signal and the stop."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, delay: float) -> None:
        super().__init__(config)
        self._lifecycle = lifecycle
        self._delay = delay
        self._stop_at: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:  # uvicorn says where it listens only for sockets it bound itself
            addresses = [s.getsockname()[:2] for s in sockets or []]
            log.info("relay.listening", addresses=[f"{h}:{p}" for h, p in addresses])

    async def on_tick(self, counter: int) -> bool:
        if not await super().on_tick(counter):
            return False
        if self._stop_at is None:
            self._lifecycle.shutting_down = True
            self._stop_at = time.monotonic() + self._delay
            log.info("relay.draining", shutdown_delay=self._delay)
        return self.force_exit or time.monotonic() >= self._stop_at


def serve(config: Config) -> int:
    from relay.app import create_app

    server = config.server
    try:
        sockets = [bind(server.host, server.port, "server.port", reuse_port=server.reuse_port)]
        if server.internal_port is not None:
            sockets.append(
                bind(
                    server.host,
                    server.internal_port,
                    "server.internal_port",
                    reuse_port=server.reuse_port,
                )
            )
    except ListenError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    lifecycle = Lifecycle()
    uvicorn_config = uvicorn.Config(
        create_app(config, lifecycle=lifecycle),
        host=server.host,
        port=server.port,
        log_config=None,  # our pipeline, configured by the CLI
        access_log=False,  # replaced by our own http.request line
        proxy_headers=False,  # X-Forwarded-* are judged by [server].trusted_proxies
        server_header=False,
        timeout_graceful_shutdown=server.shutdown_timeout,
        # httptools (the hot path's parser) with bounds on the request head: relay/protocol.py
        http=bounded_http(server.max_header_bytes, server.header_timeout),
    )
    RelayServer(uvicorn_config, lifecycle, server.shutdown_delay).run(sockets=sockets)
    return 0
