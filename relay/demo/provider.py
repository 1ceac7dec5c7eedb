"""A DEVELOPMENT-ONLY OpenID provider for `relay demo`. Never use it for anything else.

It exists so that a new user sees a whole login on one machine in a minute: it serves
discovery, a JWKS, a login form, a token endpoint (authorization code with PKCE S256 only,
client_secret_basic), userinfo and RP-initiated logout, for one client and a few fixed test
accounts, with keys made at startup and everything kept in memory. It binds only to loopback
addresses and refuses any other.
"""

from __future__ import annotations

import base64
import html
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from relay.config import is_loopback_host

BANNER = "Development provider: for trying oidc-relay on this machine only."


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    claims: dict[str, Any]


ACCOUNTS = {
    "alice": Account(
        "alice",
        "alice-demo-password",
        {
            "sub": "demo-alice",
            "email": "alice@example.com",
            "email_verified": True,
            "preferred_username": "alice",
            "name": "Alice Example",
            "groups": ["admins", "staff"],
        },
    ),
    "bob": Account(
        "bob",
        "bob-demo-password",
        {
            "sub": "demo-bob",
            "email": "bob@example.com",
            "email_verified": True,
            "preferred_username": "bob",
            "name": "Bob Example",
            "groups": ["staff"],
        },
    ),
}


@dataclass
class _Grant:
    redirect_uri: str
    challenge: str
    nonce: str | None
    claims: dict[str, Any]
    expires_at: float


class DevProvider:
    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        redirect_uris: list[str],
        post_logout_redirect_uris: list[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not is_loopback_host(urlsplit(issuer).hostname):
            raise ValueError("the development provider serves loopback addresses only")
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uris = redirect_uris
        self.post_logout_redirect_uris = post_logout_redirect_uris
        self._clock = clock
        self._key = RSAKey.generate_key(2048, parameters={"kid": "dev-1", "use": "sig"})
        self._grants: dict[str, _Grant] = {}
        self._access_tokens: dict[str, dict[str, Any]] = {}
        self.app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/jwks", self.jwks),
                Route("/authorize", self.authorize, methods=["GET", "POST"]),
                Route("/token", self.token, methods=["POST"]),
                Route("/userinfo", self.userinfo),
                Route("/end_session", self.end_session),
            ]
        )

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token",
                "jwks_uri": self.issuer + "/jwks",
                "userinfo_endpoint": self.issuer + "/userinfo",
                "end_session_endpoint": self.issuer + "/end_session",
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "scopes_supported": ["openid", "email", "profile"],
                "authorization_response_iss_parameter_supported": True,
            }
        )

    async def jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [self._key.as_dict(private=False)]})

    async def authorize(self, request: Request) -> Response:
        params = dict(request.query_params)
        if request.method == "POST":
            params = await _form(request)
        problem = self._check_authorize(params)
        if problem:
            return _page("Request refused", f"<p>{html.escape(problem)}</p>", status=400)
        if request.method == "GET":
            return self._login_form(params, error=None)
        account = ACCOUNTS.get(params.get("username", ""))
        if account is None or not secrets.compare_digest(
            account.password, params.get("password", "")
        ):
            return self._login_form(params, error="Unknown user or wrong password.")
        code = secrets.token_urlsafe(32)
        self._grants[code] = _Grant(
            redirect_uri=params["redirect_uri"],
            challenge=params["code_challenge"],
            nonce=params.get("nonce"),
            claims=account.claims,
            expires_at=self._clock() + 60,
        )
        back = {"code": code, "state": params.get("state", ""), "iss": self.issuer}
        return RedirectResponse(params["redirect_uri"] + "?" + urlencode(back), status_code=303)

    def _check_authorize(self, params: dict[str, str]) -> str | None:
        if params.get("client_id") != self.client_id:
            return "Unknown client_id."
        if params.get("redirect_uri") not in self.redirect_uris:
            return "redirect_uri is not registered for this client."
        if params.get("response_type") != "code":
            return "Only response_type=code is supported."
        if "openid" not in params.get("scope", "").split():
            return "The openid scope is required."
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return "PKCE with code_challenge_method=S256 is required."
        return None

    def _login_form(self, params: dict[str, str], error: str | None) -> Response:
        keep = (
            "client_id",
            "redirect_uri",
            "response_type",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
        )
        hidden = "".join(
            f'<input type=hidden name="{k}" value="{html.escape(params.get(k, ""))}">' for k in keep
        )
        accounts = ", ".join(
            f"<code>{html.escape(a.username)}</code> / <code>{html.escape(a.password)}</code>"
            for a in ACCOUNTS.values()
        )
        body = (
            f"<p class=banner>{html.escape(BANNER)}</p>"
            + (f"<p class=error>{html.escape(error)}</p>" if error else "")
            + f'<form method=post action="{html.escape(self.issuer)}/authorize">{hidden}'
            "<p><label>Username <input name=username autocomplete=username autofocus></label></p>"
            "<p><label>Password <input name=password type=password"
            " autocomplete=current-password></label></p>"
            "<p><button type=submit>Sign in</button></p></form>"
            f"<p class=muted>Test accounts: {accounts}</p>"
        )
        return _page("Sign in to the development provider", body, status=200 if not error else 401)

    async def token(self, request: Request) -> Response:
        if not self._client_authenticated(request.headers.get("authorization", "")):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        form = await _form(request)
        if form.get("grant_type") != "authorization_code":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        grant = self._grants.pop(form.get("code", ""), None)
        if (
            grant is None
            or grant.expires_at < self._clock()
            or form.get("redirect_uri") != grant.redirect_uri
            or create_s256_code_challenge(form.get("code_verifier", "")) != grant.challenge
        ):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now = int(self._clock())
        id_token = jwt.encode(
            {"alg": "RS256", "kid": self._key.kid, "typ": "JWT"},
            {
                "iss": self.issuer,
                "aud": self.client_id,
                "azp": self.client_id,
                "iat": now,
                "exp": now + 300,
                "auth_time": now,
                **({"nonce": grant.nonce} if grant.nonce else {}),
                **grant.claims,
            },
            self._key,
            algorithms=["RS256"],
        )
        access_token = secrets.token_urlsafe(32)
        self._access_tokens[access_token] = grant.claims
        return JSONResponse(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 3600,
                "id_token": id_token,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def userinfo(self, request: Request) -> Response:
        header = request.headers.get("authorization", "")
        claims = self._access_tokens.get(header.removeprefix("Bearer ").strip())
        if not header.startswith("Bearer ") or claims is None:
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return JSONResponse(claims)

    async def end_session(self, request: Request) -> Response:
        after = request.query_params.get("post_logout_redirect_uri")
        if after in self.post_logout_redirect_uris:
            # RP-Initiated Logout 1.0 §3: the RP's state comes back with the browser.
            state = request.query_params.get("state")
            if state:
                after += ("&" if "?" in after else "?") + urlencode({"state": state})
            return RedirectResponse(after, status_code=303)
        return _page("Signed out", "<p>You are signed out of the development provider.</p>")

    def _client_authenticated(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode()
        except ValueError:
            return False
        user, _, password = decoded.partition(":")
        return unquote(user) == self.client_id and secrets.compare_digest(
            unquote(password), self._client_secret
        )


async def _form(request: Request) -> dict[str, str]:
    # Forms here are always urlencoded; parsing them needs no multipart library.
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace")))


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:30rem;margin:3rem auto;padding:0 1rem}"
        ".banner{background:#fff3cd;padding:.5rem}.error{color:#b00020}.muted{color:#666}"
        "input{font-size:1rem}button{font-size:1rem;padding:.4rem 1rem}"
    )
    return HTMLResponse(
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
        f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}"
        "</body></html>",
        status_code=status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )
