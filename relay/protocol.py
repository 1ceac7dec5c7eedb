"""uvicorn's httptools protocol with bounds on a request's head: its size and the time it takes.

uvicorn's h11 protocol bounds the head (``h11_max_incomplete_event_size``) but the httptools
one, which the hot path runs on, takes a head of any size (a 16 MB Cookie header was read,
parsed and answered) and waits for it forever (a client sending one header line a second
kept its connection, and a task's worth of state, for as long as it liked). Here:

- a head larger than [server] max_header_bytes gets 431 and the connection is closed. It is
  checked after each read, so what is buffered stays below the bound plus one read (the
  event loop reads at most 256 KiB at a time);
- a head not complete within [server] header_timeout of the connection's opening (or of the
  request's first byte, on a kept-alive connection) gets 408 and the connection is closed.

Both are logged as ``http.refused`` with the reason. The body is not bounded in time here:
the relay reads bodies only on POST /admin/sessions/revoke (16 KiB at most) and the
back-channel logout; a proxy's body timeout covers a client that trickles one.

This subclasses a class uvicorn does not document as an extension point; uvicorn is pinned
below 1.0 in pyproject.toml, and tests/test_serve.py runs both bounds against `relay serve`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger("relay.serve")


class _BoundedHead(HttpToolsProtocol):
    max_head = 64 * 1024
    head_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # bytes read while the head is incomplete (what is buffered)
        self._head_size = 0  # the head as parsed: the request target and header lines
        self._in_head = True  # until the head of the current request is complete
        self._too_large = False  # a complete head over the bound: the request is not run
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # From the connection's opening: one that never sends a byte is bounded too.
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._too_large:
            return  # refused; the connection is closing
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # A head that arrived whole in this read is judged by its parsed size; one still
        # incomplete by what is buffered, so that it cannot grow without bound.
        incomplete = self._in_head and self._head_bytes > self.max_head
        if (self._too_large or incomplete) and not self.transport.is_closing():
            self._too_large = True
            self._refuse(431, "Request Header Fields Too Large", "headers_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._head_size = True, 0, 0
        if self._head_timer is None:  # a kept-alive connection's next request
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_timer()
        if self._head_size > self.max_head:
            self._too_large = True  # no request cycle is started; data_received answers
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._too_large:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._too_large:
            super().on_message_complete()

    def _stop_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        # Upgraded (a WebSocket) or already going: the transport is no longer ours to close.
        if not self._in_head or self.transport.is_closing():
            return
        if self.transport.get_protocol() is not self:
            return
        self._refuse(408, "Request Timeout", "header_timeout")

    def _refuse(self, status: int, phrase: str, reason: str) -> None:
        client = self.client[0] if self.client else None
        log.warning(
            "http.refused",
            reason=reason,
            client=client,
            status=status,
            max_header_bytes=self.max_head,
            header_timeout=self.head_timeout,
        )
        # Only when no response of an earlier (pipelined) request is still being written.
        if self.cycle is None or self.cycle.response_complete:
            body = f"{phrase}\n".encode("ascii")
            self.transport.write(
                f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode("ascii")
                + body
            )
        self.transport.close()


def bounded_http(max_header_bytes: int, header_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...), with these bounds."""
    return type(
        "BoundedHttpTools",
        (_BoundedHead,),
        {"max_head": max_header_bytes, "head_timeout": header_timeout},
    )
