"""GET /sessions: a signed-in person's own sessions (device, where, when, provider), with
POST /sessions/end ("sign out this device") and POST /sessions/end-others ("sign out
everywhere else"). HTML, or JSON when asked; the forms work without JavaScript.

A person sees and ends only sessions with their own subject: the statements say so
(store/listing.py ``sessions_of``, store/revocation.py), whatever id a form names. Every POST
passes the same origin check as logout. An ending reaches every replica as any other does
(store/invalidation.py), within the cache's bound.
"""

from __future__ import annotations

import html
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from relay.crypto import short_hash
from relay.endpoints import Context, context, same_origin
from relay.endpoints.session import logout_targets
from relay.errors import BadRequest, Forbidden, Unauthorized
from relay.forwarded import is_navigation
from relay.pages import page, wants_json
from relay.store.listing import SessionRow, hash_prefix, sessions_of
from relay.store.records import ActiveSession
from relay.store.revocation import Ended

log = structlog.get_logger("relay.sessions")

MAX_FORM = 1024


async def sessions_page(request: Request) -> Response:
    ctx = context(request)
    try:
        current = await ctx.gate.session(ctx.cookies.session_id(request))
    except Unauthorized:
        if wants_json(request) or not is_navigation(request, ctx.proxies):
            raise
        public_url = ctx.config.server.public_url
        rd = urlencode({"rd": public_url + "/sessions"})
        return RedirectResponse(f"{public_url}/login?{rd}", status_code=302)
    rows = await sessions_of(ctx.db, current.subject, ctx.now())
    if wants_json(request):
        listed = [row.public() | {"current": row.id_hash == current.id_hash} for row in rows]
        return JSONResponse({"sessions": listed})
    # The current device's button is a sign-out, which may go on to the provider's logout.
    return page(
        "Your sessions", _render(ctx, current, rows), form_targets=await logout_targets(ctx)
    )


async def end_one(request: Request) -> Response:
    """Sign out one of the person's sessions (named by its short id, as the page and the
    JSON name it). Their own current one is a sign-out, as POST /logout."""
    ctx, current = await _owner(request)
    prefix = hash_prefix(await _field(request, "session") or "")
    if prefix is None:
        raise BadRequest(
            "sessions.bad_id", public_message="No such session.", start_again="sessions"
        )
    if current.id_hash.startswith(prefix):
        after = await ctx.flows.logout(ctx.cookies.session_id(request))
        response = RedirectResponse(after, status_code=303)
        ctx.cookies.clear_session(response)
        return response
    ended = await ctx.sessions.revocation.revoke_prefix(prefix, subject=current.subject)
    return _ended(request, ctx, current, ended)


async def end_others(request: Request) -> Response:
    ctx, current = await _owner(request)
    ended = await ctx.sessions.revocation.end_others(current.subject, current.id_hash)
    return _ended(request, ctx, current, ended)


async def _owner(request: Request) -> tuple[Context, ActiveSession]:
    ctx = context(request)
    if not same_origin(request, ctx.config.server.origin):
        raise Forbidden("sessions.cross_origin")
    return ctx, await ctx.gate.session(ctx.cookies.session_id(request))


async def _field(request: Request, name: str) -> str | None:
    """One field of a small urlencoded form (the page's own: a session id), read without a
    multipart parser; a body past MAX_FORM is not a form of ours."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    return dict(parse_qsl(body.decode("utf-8", "replace"))).get(name)


def _ended(request: Request, ctx: Context, current: ActiveSession, ended: list[Ended]) -> Response:
    log.info(
        "sessions.ended_by_owner",
        subject=current.subject,
        ended=[short_hash(e.id_hash) for e in ended],
    )
    if wants_json(request):
        return JSONResponse({"ended": len(ended)})
    return RedirectResponse(ctx.config.server.public_url + "/sessions", status_code=303)


def _render(ctx: Context, current: ActiveSession, rows: list[SessionRow]) -> str:
    prefix = html.escape(ctx.config.server.public_url)
    name = current.claims.get("email") or current.subject
    now = ctx.now()
    items = []
    for row in rows:
        this = row.id_hash == current.id_hash
        device = html.escape(row.public()["device"])
        signed_in, ago = _when(row.created_at, now), _ago(row.created_at, now)
        if this:
            title = f"{device} <span class=tag>This device</span>"
            action, hidden, label = f"{prefix}/logout", "", "Sign out"
        else:
            title = device
            action = f"{prefix}/sessions/end"
            hidden = f"<input type=hidden name=session value={html.escape(row.short_id)}>"
            label = "Sign out this device"
        where = row.sign_in.client_address or "Not recorded"
        provider = urlsplit(row.sign_in.provider or "").netloc or "Not recorded"
        items.append(
            f"<li{' aria-current=true' if this else ''}><h2>{title}</h2><dl>"
            f"<dt>Where</dt><dd>{html.escape(where)}</dd>"
            f"<dt>Signed in</dt><dd>{signed_in}</dd>"
            f"<dt>Last active</dt><dd>{_when(row.last_accessed_at, now)}</dd>"
            f"<dt>Provider</dt><dd>{html.escape(provider)}</dd></dl>"
            f'<form method=post action="{action}">{hidden}'
            f'<button type=submit aria-label="{label}: {device}, signed in {ago}">'
            f"{label}</button></form></li>"
        )
    others = ""
    if len(rows) > 1:
        others = (
            f'<form method=post action="{prefix}/sessions/end-others">'
            "<button type=submit>Sign out everywhere else</button></form>"
        )
    return (
        f"<p>Signed in as <strong>{html.escape(str(name))}</strong>. These are the devices "
        "signed in to the apps behind this relay with your account.</p>"
        f'<ul class=sessions aria-label="Your sessions">{"".join(items)}</ul>{others}'
        f'<p class=muted><a href="{prefix}/">Back</a></p>'
    )


def _when(at: int, now: int) -> str:
    stamp = time.gmtime(at)
    return (
        f'<time datetime="{time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp)}">'
        f"{_ago(at, now)}</time> <span class=muted>"
        f"({time.strftime('%Y-%m-%d %H:%M UTC', stamp)})</span>"
    )


def _ago(at: int, now: int) -> str:
    seconds = max(0, now - at)
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = seconds // length
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"
