"""GET /healthz, GET /readyz and GET /metrics: for orchestrators and scrapers."""

from __future__ import annotations

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.endpoints import INTERNAL, context
from relay.errors import DatabaseUnavailable, RelayError
from relay.forwarded import caller_address
from relay.pages import json_error

log = structlog.get_logger("relay.probes")


async def healthz(request: Request) -> Response:
    """The process answers: nothing else is asked."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Whether this replica can do its job: 503 only while its database is away, it is
    shutting down, or it is starting and warming its cache (30 s at most). The provider's
    state is reported but does not fail the probe: signed-in users keep passing /auth while
    the provider is down, and taking every replica out of the load balancer would turn a
    login outage into a total one."""
    ctx = context(request)
    body = {"status": "ok", "database": "ok", "provider": "ok"}
    try:
        await ctx.db.ping()
    except DatabaseUnavailable as exc:
        log.warning("readyz.database_unavailable", reason=exc.reason, detail=exc.detail)
        body["database"] = f"unavailable: {exc.reason}"
    try:
        await ctx.discovery.get()  # cached, or one attempt when the backoff allows
    except RelayError:
        body["provider"] = f"unavailable: {ctx.discovery.last_error}"
    # Trusted while the invalidation listener (PostgreSQL) or watcher (SQLite) keeps up.
    body["session_cache"] = "trusted" if ctx.sessions.cache.trusted() else "bypassed"
    if ctx.sessions.grace.covers():
        body["session_cache"] = "outage_grace"  # held sessions answer; the probe still fails
    if ctx.lifecycle.shutting_down:
        body["status"] = "shutting_down"
        return JSONResponse(body, status_code=503)
    warmer = request.app.state.warmer
    if warmer is not None and warmer.warming:
        # A starting replica takes its share of the checks once its cache is warm
        # (store/warm.py, READY_WAIT at most).
        body["status"] = body["session_cache"] = "warming"
        return JSONResponse(body, status_code=503)
    if body["database"] != "ok":
        body["status"] = "unavailable"
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    """Prometheus text format, for the addresses in [server].metrics_allowed only: behind a
    proxy this path is as public as the login, and counts are nobody else's business. On
    [server].internal_port, for whoever reaches that port."""
    ctx = context(request)
    internal = request.scope.get(INTERNAL, False)
    reader = caller_address(request, ctx.proxies)
    if not internal and reader not in ctx.metrics_readers:
        return json_error(404, "not_found", "Not found.")
    body = generate_latest(ctx.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
