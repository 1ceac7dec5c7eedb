"""The admin API under /admin, for operators' scripts: session counts, the session list,
revocation, a prune pass. JSON in and out.

Off unless [admin] token is set (404, as if the paths did not exist). Then a request must come
from an address in [admin] allowed (else 404, like /metrics) or in on [server] internal_port
(where, when that port is set, the API lives alone), and carry ``Authorization: Bearer
<token>`` (else 401). The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.audit import sessions_ended
from relay.endpoints import INTERNAL, Context, context
from relay.errors import RelayError
from relay.forwarded import AddressSet, caller_address
from relay.pages import json_error
from relay.pruner import prune_once
from relay.store.database import text_problem
from relay.store.listing import (
    MAX_PAGE,
    MIN_PREFIX,
    AmbiguousPrefix,
    hash_prefix,
    list_sessions,
)
from relay.store.revocation import Ended
from relay.store.stats import count_sessions

log = structlog.get_logger("relay.admin")

MAX_BODY = 16 * 1024  # {"sub": ...} or {"id": ...}
_CURSOR = re.compile(r"^[0-9a-f]{64}$")


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


_MESSAGES = {
    "not_found": "Not found.",
    "unauthorized": "A valid admin token is needed.",
    "forbidden": "Not from this address.",
    "no_such_session": "No active session has that id.",
}


def _error(status: int, error: str, description: str | None = None, **extra: Any) -> Response:
    headers = {"www-authenticate": 'Bearer realm="relay-admin"'} if status == 401 else None
    message = description or _MESSAGES.get(error, error.replace("_", " ").capitalize() + ".")
    return json_error(status, error, message, headers, **extra)


def _admitted(request: Request) -> Context:
    """The context, for a request the API may answer; else raise _Refused with the answer."""
    ctx = context(request)
    expected = ctx.config.admin.token
    if expected is None:
        raise _Refused(_error(404, "not_found"))
    if not request.scope.get(INTERNAL, False):
        caller = caller_address(request, ctx.proxies)
        if caller is None or caller not in AddressSet.parse(ctx.config.admin.allowed):
            log.warning("admin.refused", reason="address_not_allowed", client=caller)
            raise _Refused(_error(404, "not_found"))
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        log.warning("admin.refused", reason="no_token")
        raise _Refused(_error(401, "unauthorized", "a bearer token is required"))
    # Constant time: how long the comparison takes says nothing about the token.
    if not hmac.compare_digest(
        given.strip().encode("utf-8"), expected.get_secret_value().encode("utf-8")
    ):
        log.warning("admin.refused", reason="wrong_token")
        raise _Refused(_error(401, "unauthorized", "the bearer token is not the admin token"))
    return ctx


async def stats(request: Request) -> Response:
    """GET /admin/stats: sessions by state."""
    try:
        ctx = _admitted(request)
        counts = await count_sessions(ctx.db, ctx.now())
    except _Refused as refused:
        return refused.response
    except RelayError as exc:
        return _unavailable(exc)
    log.info("admin.stats")
    return JSONResponse(
        {"active": counts.active, "pending": counts.pending, "expired": counts.expired}
    )


async def sessions(request: Request) -> Response:
    """GET /admin/sessions?sub=&limit=&cursor=: one page, ordered; ``next_cursor`` asks for
    the next (null on the last page)."""
    try:
        ctx = _admitted(request)
        params = request.query_params
        limit = _limit(params.get("limit"))
        cursor = params.get("cursor") or None
        if cursor is not None and not _CURSOR.match(cursor):
            raise _Refused(_error(400, "invalid_request", "cursor: not one this API handed out"))
        subject = params.get("sub") or None
        if subject is not None:
            _storable("sub", subject)
        rows = await list_sessions(ctx.db, ctx.now(), subject=subject, after=cursor, limit=limit)
    except _Refused as refused:
        return refused.response
    except RelayError as exc:
        return _unavailable(exc)
    log.info("admin.listed", subject=subject, count=len(rows))
    next_cursor = rows[-1].id_hash if len(rows) == limit else None
    return JSONResponse({"sessions": [row.public() for row in rows], "next_cursor": next_cursor})


async def revoke(request: Request) -> Response:
    """POST /admin/sessions/revoke {"sub": ...} or {"id": "<hash prefix>"} → {"ended": n}."""
    try:
        ctx = _admitted(request)
        body = await _json_object(request)
        if set(body) == {"sub"} and isinstance(body["sub"], str) and 0 < len(body["sub"]) <= 255:
            subject = _storable("sub", body["sub"])
            ended = await ctx.sessions.revocation.revoke_subject(subject)
            await ctx.flows.providers.revoke_grants(ended)
            _audit(request, ctx, ended, subject)
            return JSONResponse({"ended": len(ended)})
        if set(body) == {"id"} and isinstance(body["id"], str):
            prefix = hash_prefix(body["id"])
            if prefix is None:
                reason = f"id: {MIN_PREFIX} to 64 hex characters of a session's hash"
                raise _Refused(_error(400, "invalid_request", reason))
            ended = await ctx.sessions.revocation.revoke_prefix(prefix)
            await ctx.flows.providers.revoke_grants(ended)
            _audit(request, ctx, ended, prefix)
            if not ended:
                return _error(404, "no_such_session", "no active session's id starts so")
            return JSONResponse({"ended": 1})
        raise _Refused(_error(400, "invalid_request", 'give {"sub": "..."} or {"id": "..."}'))
    except _Refused as refused:
        return refused.response
    except AmbiguousPrefix as exc:
        log.info("admin.revoke_refused", reason="ambiguous_prefix", matches=exc.matches)
        return _error(
            409,
            "ambiguous_id",
            "several sessions' ids start so: give more characters",
            matches=exc.matches,
        )
    except RelayError as exc:
        return _unavailable(exc)


async def prune(request: Request) -> Response:
    """POST /admin/prune: one prune pass now → {"removed": n, "skipped": bool}."""
    try:
        ctx = _admitted(request)
        now = ctx.now()
        result = await prune_once(ctx.db, now, ctx.config.session.prune_batch_size, ctx.metrics)
    except _Refused as refused:
        return refused.response
    except RelayError as exc:
        return _unavailable(exc)
    log.info("admin.pruned", removed=result.removed, skipped=result.skipped)
    return JSONResponse({"removed": result.removed, "skipped": result.skipped})


def _audit(request: Request, ctx: Context, ended: list[Ended], asked: str) -> None:
    # The API knows its caller only by the token (one for everyone) and the address.
    source = caller_address(request, ctx.proxies)
    sessions_ended(ended, via="api", by="admin token", source=source, asked=asked)


def _limit(raw: str | None) -> int:
    if raw is None:
        return 100
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise _Refused(_error(400, "invalid_request", f"limit: a whole number, 1 to {MAX_PAGE}"))
    return int(raw)


async def _json_object(request: Request) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise _Refused(_error(413, "invalid_request", "body too large"))
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        log.warning("admin.refused", reason="bad_json")
        raise _Refused(_error(400, "invalid_request", "the body is not JSON")) from None
    except RecursionError:
        # Arrays nested thousands deep fit in MAX_BODY and exhaust the parser's stack.
        log.warning("admin.refused", reason="json_too_deep")
        raise _Refused(_error(400, "invalid_request", "the body is nested too deep")) from None
    if not isinstance(value, dict):
        raise _Refused(_error(400, "invalid_request", "the body must be a JSON object"))
    return value


def _storable(field: str, value: str) -> str:
    """``value``, when the database can take it: JSON's "\\u0000" and "\\ud800" parse into
    strings that PostgreSQL (NUL) or either driver (a lone surrogate) refuse, which would
    otherwise surface as an outage (503) or a crash (500)."""
    problem = text_problem(value)
    if problem is not None:
        log.warning("admin.refused", reason="unstorable_text", field=field, problem=problem)
        raise _Refused(_error(400, "invalid_request", f"{field}: {problem}"))
    return value


def _unavailable(exc: RelayError) -> Response:
    log.warning("admin.failed", reason=exc.reason, detail=exc.detail or None)
    return json_error(exc.status, exc.reason, exc.public_message)
