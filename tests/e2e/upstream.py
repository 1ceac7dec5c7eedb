"""The app behind the proxy in the end-to-end tests: it shows what the proxy told it."""

from __future__ import annotations

import html

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket


def identity(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith("x-auth-request-")}


async def home(request: Request) -> Response:
    email = request.headers.get("x-auth-request-email", "")
    user = request.headers.get("x-auth-request-user", "")
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Protected app</title>"
        "</head><body style='font-family:sans-serif;margin:3rem'><h1>Protected app</h1>"
        f"<p>Signed in as <strong id=email>{html.escape(email)}</strong>"
        f" (<span id=user>{html.escape(user)}</span>)</p>"
        "<p><a id=logout href='/oauth2/logout'>Sign out</a></p></body></html>"
    )


async def headers(request: Request) -> Response:
    return JSONResponse(identity(dict(request.headers)))


async def cookies(request: Request) -> Response:
    """The Cookie header as the app received it (the proxy strips the relay's cookies)."""
    return JSONResponse({"cookie": request.headers.get("cookie")})


async def healthz(request: Request) -> Response:
    """The app's own health check, which the proxies pass without a session."""
    return JSONResponse(
        {"status": "ok", "path": request.url.path, "identity": identity(dict(request.headers))}
    )


async def admin(request: Request) -> Response:
    """The part of the app only the "admins" group may open (the proxies narrow the check)."""
    return JSONResponse(
        {"area": "admin", "path": request.url.path} | identity(dict(request.headers))
    )


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(identity(dict(websocket.headers)))
    await websocket.close()


app = Starlette(
    routes=[
        Route("/", home),
        Route("/headers", headers),
        Route("/cookies", cookies),
        Route("/healthz", healthz),
        Route("/admin/{rest:path}", admin),
        WebSocketRoute("/ws", ws),
    ]
)
