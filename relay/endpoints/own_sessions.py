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
from urllib.parse import urlencode

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from relay.crypto import short_hash
from relay.endpoints import Context, context, same_origin, small_form
from relay.endpoints.session import logout_targets
from relay.errors import BadRequest, Forbidden, Unauthorized
from relay.forwarded import is_navigation
from relay.pages import Button, page, render_button, session_items, wants_json
from relay.store.listing import AmbiguousPrefix, SessionRow, hash_prefix, sessions_of
from relay.store.records import ActiveSession
from relay.store.revocation import Ended

log = structlog.get_logger("relay.sessions")


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
    prefix = hash_prefix((await small_form(request)).get("session", ""))
    if prefix is None:
        raise BadRequest(
            "sessions.bad_id", public_message="No such session.", start_again="sessions"
        )
    if current.id_hash.startswith(prefix):
        after = await ctx.flows.logout(ctx.cookies.session_id(request))
        response = RedirectResponse(after, status_code=303)
        ctx.cookies.clear_session(response)
        return response
    try:
        ended = await ctx.sessions.revocation.revoke_prefix(prefix, subject=current.subject)
    except AmbiguousPrefix:  # a shortened id of the person's own choosing
        raise BadRequest(
            "sessions.ambiguous_id", public_message="No such session.", start_again="sessions"
        ) from None
    await ctx.flows.providers.revoke_grants(ended)
    return _ended(request, ctx, current, ended)


async def end_others(request: Request) -> Response:
    ctx, current = await _owner(request)
    ended = await ctx.sessions.revocation.end_others(current.subject, current.id_hash)
    await ctx.flows.providers.revoke_grants(ended)
    return _ended(request, ctx, current, ended)


async def _owner(request: Request) -> tuple[Context, ActiveSession]:
    ctx = context(request)
    if not same_origin(request, ctx.config.server.origin):
        raise Forbidden("sessions.cross_origin")
    return ctx, await ctx.gate.session(ctx.cookies.session_id(request))


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
    prefix = ctx.config.server.public_url
    name = current.claims.get("email") or current.subject

    def button(row: SessionRow) -> Button:
        if row.id_hash == current.id_hash:
            return Button(f"{prefix}/logout", "Sign out")
        return Button(
            f"{prefix}/sessions/end", "Sign out this device", (("session", row.short_id),)
        )

    items = session_items(rows, ctx.now(), button, current=current.id_hash)
    others = ""
    if len(rows) > 1:
        others = render_button(Button(f"{prefix}/sessions/end-others", "Sign out everywhere else"))
    return (
        f"<p>Signed in as <strong>{html.escape(str(name))}</strong>. These are the devices "
        "signed in to the apps behind this relay with your account.</p>"
        f'<ul class=sessions aria-label="Your sessions">{items}</ul>{others}'
        f'<p class=muted><a href="{html.escape(prefix)}/">Back</a></p>'
    )
