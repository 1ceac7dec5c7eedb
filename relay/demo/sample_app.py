"""The demo's protected app: a page that greets whoever the relay says is signed in."""

from __future__ import annotations

import html

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from relay.guard import Identity, RelayGuard


async def home(request: Request) -> Response:
    who: Identity = request.state.relay_identity
    relay_url = request.app.state.relay_url
    groups = ", ".join(who.groups) or "none"
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Sample app</title>"
        "</head><body style='font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto'>"
        "<h1>Sample app</h1>"
        f"<p id=greeting>Signed in as <strong id=email>{html.escape(who.email)}</strong>"
        f" ({html.escape(who.user)}).</p>"
        f"<p>Subject: <code>{html.escape(who.subject)}</code>. Groups: {html.escape(groups)}.</p>"
        f'<p><a id=logout href="{html.escape(relay_url)}/logout">Sign out</a></p>'
        "</body></html>"
    )


def sample_app(relay_url: str) -> RelayGuard:
    app = Starlette(routes=[Route("/", home)])
    app.state.relay_url = relay_url
    return RelayGuard(app, relay_url=relay_url)
