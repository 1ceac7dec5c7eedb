"""The few pages a person sees, and the one place errors become responses.

Pages are plain HTML with every dynamic value escaped; a request that asks for JSON
(``Accept: application/json``) gets ``{"error": ..., "message": ..., "request_id": ...}``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from relay.devices import describe
from relay.errors import AccessDenied, BadRequest, RelayError
from relay.store.listing import SessionRow

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
    "color:#222}h1{font-size:1.4rem}button{font-size:1rem;padding:.5rem 1rem}"
    ".muted{color:#666;font-size:.85rem}"
    "ul.sessions{list-style:none;padding:0}ul.sessions li{border:1px solid #ccc;"
    "border-radius:.5rem;padding:.75rem 1rem;margin:.75rem 0}"
    "ul.sessions li[aria-current]{border-color:#36c}h2{font-size:1.15rem;margin:1rem 0 .25rem}"
    "ul.sessions h2,h3{font-size:1.05rem;margin:.25rem 0}"
    "dl{display:grid;grid-template-columns:auto 1fr;gap:.2rem .75rem;margin:.5rem 0}"
    "dt{color:#555}dd{margin:0;overflow-wrap:anywhere}"
    ".tag{font-size:.8rem;background:#e6eeff;border-radius:.25rem;padding:.1rem .4rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()


def json_error(
    status: int,
    error: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The relay's one JSON error shape, on every endpoint: a reason slug, a sentence for a
    person, the request id (as in the access line), and what an endpoint adds to them."""
    request_id = structlog.contextvars.get_contextvars().get("request_id", "")
    body = {"error": error, "message": message, "request_id": request_id, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def page(
    title: str, body_html: str, status: int = 200, form_targets: Iterable[str] = ()
) -> HTMLResponse:
    """A small page; ``body_html`` must already be escaped by the caller."""
    document = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body_html}</body></html>"
    )
    targets = " ".join(["'self'", *form_targets])
    csp = (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action {targets}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return HTMLResponse(document, status_code=status, headers={"content-security-policy": csp})


def redirect_page(url: str, status: int = 302) -> HTMLResponse:
    """A redirect that still works when a proxy turns it into another status: oauth2-proxy's
    older nginx form (``error_page 401 =403 /oauth2/sign_in``) hands the browser the relay's
    answer as a 403, whose Location no browser follows. The body sends it on (a refresh, and
    a link for a browser that refuses refreshes)."""
    target = html.escape(url)
    response = page(
        "Continue to sign in",
        f'<meta http-equiv=refresh content="0;url={target}">'
        f'<p><a href="{target}">Continue to sign in</a></p>',
        status=status,
    )
    response.headers["location"] = url
    return response


async def error_response(request: Request, exc: Exception) -> Response:
    """The one exception handler: a fixed public message and the request id; details go to
    the log (the reason is bound to the request's access line)."""
    if not isinstance(exc, RelayError):
        structlog.get_logger("relay").exception("request.crashed")
        exc = RelayError("internal_error")
    structlog.contextvars.bind_contextvars(reason=exc.reason)
    if exc.detail:
        structlog.contextvars.bind_contextvars(detail=exc.detail)
    request_id = structlog.contextvars.get_contextvars().get("request_id", "")
    headers = {"www-authenticate": exc.challenge} if exc.challenge else None
    if wants_json(request):
        return json_error(exc.status, exc.reason, exc.public_message, headers)
    again = ""
    if isinstance(exc, BadRequest):  # the user can fix it by starting over; not so for others
        again = f'<p><a href="{html.escape(exc.start_again)}">Start again</a></p>'
    title = {403: "Not allowed", 404: "Not found"}.get(exc.status, "Sign-in problem")
    if exc.status >= 500:
        title = "Service problem"
    if isinstance(exc, AccessDenied):
        url = html.escape(exc.sign_out_url)
        own = html.escape(exc.sign_out_url.removesuffix("/logout") + "/sessions")
        again = (
            f'<p><a href="{url}">Sign out</a> to use another account, or see '
            f'<a href="{own}">your sessions</a>.</p>'
        )
    response = page(
        title,
        f"<p>{html.escape(exc.public_message)}</p>{again}"
        f"<p class=muted>Request id: {html.escape(request_id)}</p>",
        status=exc.status,
    )
    if headers:
        response.headers.update(headers)
    return response


@dataclass(frozen=True)
class Button:
    """A form of one button: what a row of sessions offers (sign out, end, ask first)."""

    action: str
    label: str
    fields: tuple[tuple[str, str], ...] = ()
    method: str = "post"


def render_button(button: Button, described: str = "") -> str:
    fields = "".join(
        f'<input type=hidden name="{html.escape(name)}" value="{html.escape(value)}">'
        for name, value in button.fields
    )
    label = html.escape(button.label)
    aria = f' aria-label="{label}: {described}"' if described else ""
    return (
        f'<form method={button.method} action="{html.escape(button.action)}">{fields}'
        f"<button type=submit{aria}>{label}</button></form>"
    )


def session_items(
    rows: Iterable[SessionRow],
    now: int,
    button: Callable[[SessionRow], Button],
    *,
    current: str | None = None,
    heading: str = "h2",
) -> str:
    """Sessions as list items (for a <ul class=sessions>): the device, where from, when
    signed in, last active, the provider, and the row's button; ``current`` marked as this
    device. Every value a browser or a provider chose is escaped here."""
    items = []
    for row in rows:
        this = row.id_hash == current
        device = html.escape(describe(row.sign_in.user_agent))
        title = f"{device} <span class=tag>This device</span>" if this else device
        where = row.sign_in.client_address or "Not recorded"
        provider = urlsplit(row.sign_in.provider or "").netloc or "Not recorded"
        items.append(
            f"<li{' aria-current=true' if this else ''}><{heading}>{title}</{heading}><dl>"
            f"<dt>Where</dt><dd>{html.escape(where)}</dd>"
            f"<dt>Signed in</dt><dd>{_when(row.created_at, now)}</dd>"
            f"<dt>Last active</dt><dd>{_when(row.last_accessed_at, now)}</dd>"
            f"<dt>Provider</dt><dd>{html.escape(provider)}</dd></dl>"
            f"{render_button(button(row), f'{device}, signed in {_ago(row.created_at, now)}')}"
            "</li>"
        )
    return "".join(items)


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
