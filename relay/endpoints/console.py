"""The operator console: /console, web pages for the people the relay signs in and
[admin] allowed_groups or allowed_emails admits (beside the bearer-token API under /admin).

GET /console shows the counts and finds live sessions by subject or email (``?q=``); GET
/console/end asks before ending one session (``?session=``) or all of a user's (``?sub=``);
POST /console/end does it, after the same origin check as logout, and writes the audit line
(relay/audit.py). JSON when asked, like every page. Off (404) without allowed_groups or
allowed_emails; a signed-in person it does not admit gets 403.
"""

from __future__ import annotations

import html
from itertools import groupby
from urllib.parse import urlencode

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from relay.audit import sessions_ended
from relay.endpoints import Context, context, same_origin, small_form
from relay.errors import BadRequest, Forbidden, NotFound, Unauthorized
from relay.forwarded import client_address, is_navigation
from relay.pages import Button, page, render_button, session_items, wants_json
from relay.store.database import text_problem
from relay.store.listing import (
    AmbiguousPrefix,
    SessionRow,
    find_sessions,
    hash_prefix,
    sessions_of,
)
from relay.store.records import ActiveSession
from relay.store.stats import count_sessions, signed_in_since

log = structlog.get_logger("relay.console")

MAX_QUERY = 255  # a subject's column length


async def console(request: Request) -> Response:
    try:
        ctx, operator = await _operator(request)
    except _SignIn as first:
        return RedirectResponse(first.url, status_code=302)
    now = ctx.now()
    counts = await count_sessions(ctx.db, now)
    figures = {
        "active": counts.active,
        "pending": counts.pending,
        "expired": counts.expired,
        "signed_in_last_hour": await signed_in_since(ctx.db, now - 3600, now),
        "signed_in_last_day": await signed_in_since(ctx.db, now - 86400, now),
    }
    query = _query(request.query_params.get("q"))
    rows = await find_sessions(ctx.db, query, now) if query else []
    if wants_json(request):
        return JSONResponse({"counts": figures, "sessions": [row.public() for row in rows]})
    return page("Operator console", _render(ctx, operator, figures, query, rows))


async def confirm(request: Request) -> Response:
    """GET /console/end: what would end, and a button that ends it. Changes nothing."""
    try:
        ctx, _ = await _operator(request)
    except _SignIn as first:
        return RedirectResponse(first.url, status_code=302)
    session, subject, back = _target(dict(request.query_params))
    # The user's own sessions (by subject, indexed): the search would also count others whose
    # email starts with the same text.
    rows = await sessions_of(ctx.db, subject, ctx.now()) if subject else []
    prefix = html.escape(ctx.config.server.public_url)
    if subject is not None:
        many = f"all {len(rows)} sessions" if len(rows) != 1 else "the session"
        what = f"{many} of <strong>{html.escape(subject)}</strong>"
        field = f'<input type=hidden name=sub value="{html.escape(subject)}">'
    else:
        what = f"session <code>{html.escape(session or '')}</code>"
        field = f"<input type=hidden name=session value={html.escape(session or '')}>"
    cancel = f"{prefix}/console?{urlencode({'q': back})}" if back else f"{prefix}/console"
    return page(
        "End sessions?",
        f"<p>End {what}? The next request from each of those browsers goes to sign-in.</p>"
        f'<form method=post action="{prefix}/console/end">{field}'
        f'<input type=hidden name=q value="{html.escape(back)}">'
        f'<button type=submit>End</button> <a href="{html.escape(cancel)}">Cancel</a></form>',
    )


async def end(request: Request) -> Response:
    ctx = context(request)
    if not same_origin(request, ctx.config.server.origin):
        raise Forbidden("console.cross_origin")
    ctx, operator = await _operator(request)
    session, subject, back = _target(await small_form(request))
    revocation = ctx.sessions.revocation
    try:
        if subject is not None:
            ended = await revocation.revoke_subject(subject)
        else:
            ended = await revocation.revoke_prefix(session or "")
    except AmbiguousPrefix:
        raise BadRequest("console.ambiguous_id", start_again="console") from None
    await ctx.flows.providers.revoke_grants(ended)
    sessions_ended(
        ended,
        via="console",
        by=_name(operator),
        source=client_address(request, ctx.proxies),
        asked=subject if subject is not None else session or "",
    )
    if wants_json(request):
        return JSONResponse({"ended": len(ended)})
    after = ctx.config.server.public_url + "/console"
    return RedirectResponse(f"{after}?{urlencode({'q': back})}" if back else after, 303)


async def _operator(request: Request) -> tuple[Context, ActiveSession]:
    """The context and the signed-in operator; else NotFound (the console is off),
    Unauthorized (or a browser sent to sign in first) or Forbidden."""
    ctx = context(request)
    admin = ctx.config.admin
    if not admin.console:
        raise NotFound("console.off")
    try:
        operator = await ctx.gate.admit(ctx.cookies.session_id(request))
    except Unauthorized:
        if (
            request.method != "GET"
            or wants_json(request)
            or not is_navigation(request, ctx.proxies)
        ):
            raise
        here = ctx.config.server.public_url + "/console"
        raise _SignIn(f"{ctx.config.server.public_url}/login?{urlencode({'rd': here})}") from None
    if not ctx.gate.access.operator(operator.claims, admin.allowed_groups, admin.allowed_emails):
        log.info("console.refused", subject=operator.subject)
        raise Forbidden(
            "console.not_operator", public_message="This page is for the relay's operators."
        )
    return ctx, operator


class _SignIn(Exception):
    def __init__(self, url: str) -> None:
        self.url = url


def _target(form: dict[str, str]) -> tuple[str | None, str | None, str]:
    """(a session id prefix, or a subject: exactly one), and the search to go back to."""
    back = _query(form.get("q")) or ""
    if "sub" in form:
        subject = _query(form["sub"])
        if subject:
            return None, subject, back
    elif "session" in form:
        prefix = hash_prefix(form["session"])
        if prefix is not None:
            return prefix, None, back
    raise BadRequest("console.bad_target", public_message="No such session.", start_again="console")


def _query(raw: str | None) -> str | None:
    text = (raw or "").strip()
    if not text or len(text) > MAX_QUERY or text_problem(text) is not None:
        return None
    return text


def _name(operator: ActiveSession) -> str:
    email = operator.claims.get("email")
    return email if isinstance(email, str) else operator.subject


def _render(
    ctx: Context,
    operator: ActiveSession,
    figures: dict[str, int],
    query: str | None,
    rows: list[SessionRow],
) -> str:
    prefix = html.escape(ctx.config.server.public_url)
    labels = {
        "active": "Active sessions",
        "pending": "Sign-ins under way",
        "expired": "Expired, awaiting the pruner",
        "signed_in_last_hour": "Signed in in the last hour",
        "signed_in_last_day": "Signed in in the last day",
    }
    counts = "".join(f"<dt>{labels[k]}</dt><dd>{v:,}</dd>" for k, v in figures.items())
    value = html.escape(query or "")
    found = ""
    if query is not None and not rows:
        found = f"<p>No live session has the subject or email “{value}”.</p>"
    for _, group in groupby(rows, key=lambda row: row.subject or ""):
        found += _person(ctx, list(group), query or "")
    return (
        f"<p>Signed in as <strong>{html.escape(_name(operator))}</strong>.</p><dl>{counts}</dl>"
        f'<form method=get action="{prefix}/console" role=search>'
        f'<label for=q>Subject or email</label> <input id=q name=q value="{value}" '
        f"maxlength={MAX_QUERY} autocomplete=off> <button type=submit>Find</button></form>"
        f"{found}"
    )


def _person(ctx: Context, rows: list[SessionRow], query: str) -> str:
    """One user's sessions, each with "End this session", and "End all" below: both ask
    first (GET /console/end), and come back to this search."""
    subject = rows[0].subject or ""
    ask = f"{ctx.config.server.public_url}/console/end"

    def button(row: SessionRow) -> Button:
        return Button(ask, "End this session", (("session", row.short_id), ("q", query)), "get")

    many = f"all {len(rows)} sessions" if len(rows) > 1 else "the session"
    everything = Button(ask, f"End {many} of {subject}", (("sub", subject), ("q", query)), "get")
    name, email = html.escape(subject), html.escape(rows[0].email or "")
    return (
        f"<h2>{name} <span class=muted>{email}</span></h2>"
        f'<ul class=sessions aria-label="Sessions of {name}">'
        f"{session_items(rows, ctx.now(), button, heading='h3')}</ul>"
        f"{render_button(everything)}"
    )
