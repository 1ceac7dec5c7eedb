"""GET /healthz, GET /readyz and GET /metrics: for orchestrators and scrapers."""

from __future__ import annotations

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.endpoints import context
from relay.errors import RelayError
from relay.forwarded import client_address

log = structlog.get_logger("relay.probes")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the database answers and the provider's metadata is loaded."""
    body = {"status": "ok", "database": "ok", "provider": "ok"}
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        log.warning("readyz.database_unavailable", error=type(exc).__name__)
        body["database"] = "unreachable"
    discovery = context(request).flows.discovery
    try:
        await discovery.get()  # cached, or one attempt when the backoff allows
    except RelayError:
        body["provider"] = f"unavailable: {discovery.last_error}"
    if body["database"] != "ok" or body["provider"] != "ok":
        body["status"] = "unavailable"
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    """Prometheus text format, for the addresses in [server].metrics_allowed only: behind a
    proxy this path is as public as the login, and counts are nobody else's business."""
    ctx = context(request)
    if client_address(request, ctx.proxies) not in ctx.metrics_readers:
        return JSONResponse({"error": "not_found"}, status_code=404)
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
