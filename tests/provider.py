"""An in-process OpenID provider for tests: a tiny Starlette app the relay reaches through
httpx's ASGI transport. It follows the specs by default and can be told to misbehave.

It is a test double for the relay's unit tests, not a provider: it has one client, signs in
whoever the test names, and keeps its state in memory.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

import httpx2
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, Key, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

ISSUER = "https://idp.test"
CLIENT_ID = "relay-client"
CLIENT_SECRET = "provider-client-secret-0123456789"


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str
    code_challenge_method: str
    nonce: str | None
    subject: str
    used: bool = False


@dataclass
class RefreshGrant:
    """What a refresh token stands for: whose it is and the login's nonce."""

    subject: str
    nonce: str | None


@dataclass
class Behaviour:
    """Knobs a test turns to make the provider misbehave."""

    id_token_claims: dict[str, Any] = field(default_factory=dict)  # merged over the defaults
    drop_claims: list[str] = field(default_factory=list)
    id_token_header: dict[str, Any] = field(default_factory=dict)
    signing_key: Key | None = None  # sign with this key instead of the published one
    alg: str = "RS256"
    token_status: int = 200
    token_body: Any = None  # answered as JSON instead of tokens
    token_raw_body: str | None = None  # answered as text/html instead of tokens
    discovery_overrides: dict[str, Any] = field(default_factory=dict)
    userinfo_claims: dict[str, Any] = field(default_factory=dict)  # merged over the profile
    # path -> "timeout" | "connect": the transport fails instead of reaching the endpoint;
    # "dropped": the endpoint does its work, and the connection drops before its answer
    network_failures: dict[str, str] = field(default_factory=dict)
    expires_in: int | None = 3600  # the access token's, in every token response; None: unsaid
    par: bool = False  # advertise and serve Pushed Authorization Requests (RFC 9126)
    # Refresh grants (RFC 6749 §6): a new refresh token each time (the old one then answers
    # invalid_grant), an ID token with them, and its claims merged over the defaults.
    rotate_refresh_tokens: bool = True
    refresh_id_token: bool = True
    refresh_id_token_claims: dict[str, Any] = field(default_factory=dict)
    refresh_status: int = 200  # answered (with refresh_body or server_error) to refreshes only
    refresh_body: Any = None
    refresh_delay: float = 0.0  # seconds a refresh takes: keeps it in flight while others ask
    # A slow provider, or a link that hangs and heals: a refresh is done (the refresh token
    # rotated) at once, and its answer held until the test sets this event. The relay's read
    # timeout runs meanwhile, as over a real connection.
    refresh_answer: asyncio.Event | None = None
    # Merged over every token response (code and refresh grants): a token the provider mangles.
    token_overrides: dict[str, Any] = field(default_factory=dict)


class ProviderTransport(httpx2.AsyncBaseTransport):
    """How the relay reaches the test provider: in process, with failures on demand."""

    def __init__(self, provider: TestProvider) -> None:
        self._provider = provider
        self._asgi = httpx2.ASGITransport(app=provider.app)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        failure = self._provider.behaviour.network_failures.get(request.url.path)
        if failure == "timeout":
            raise httpx2.ReadTimeout("provider did not answer", request=request)
        if failure == "connect":
            raise httpx2.ConnectError("connection refused", request=request)
        # The read timeout the relay set (httpx's own transports enforce it per read; here the
        # whole answer is one read).
        read = request.extensions.get("timeout", {}).get("read")
        try:
            async with asyncio.timeout(read):
                response = await self._asgi.handle_async_request(request)
        except TimeoutError as exc:
            raise httpx2.ReadTimeout("provider did not answer in time", request=request) from exc
        if failure == "dropped":
            await response.aread()
            raise httpx2.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        return response


class TestProvider:
    __test__ = False  # not a pytest class

    def __init__(self, clock: Callable[[], float], issuer: str = ISSUER) -> None:
        self.clock = clock
        # Another issuer (an http://127.0.0.1 address) when it is served over a real socket
        # for relay processes (tests/served.py).
        self.issuer = issuer  # what it calls itself; some providers end it in "/"
        self.rsa_key = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"})
        self.ec_key = ECKey.generate_key("P-256", parameters={"kid": "ec-1", "use": "sig"})
        self.published: list[Key] = [self.rsa_key, self.ec_key]
        self.behaviour = Behaviour()
        self.grants: dict[str, Grant] = {}
        self.subject = "user-1"
        self.sid = "op-session-1"  # the provider's session id, put in ID tokens
        self.profile: dict[str, Any] = {
            "email": "alice@example.com",
            "email_verified": True,
            "preferred_username": "alice",
            "name": "Alice Example",
            "groups": ["admins", "staff"],
        }
        self.token_requests: list[dict[str, Any]] = []
        self.calls: dict[str, int] = {
            "discovery": 0, "jwks": 0, "token": 0, "userinfo": 0, "introspect": 0, "revoke": 0,
        }  # fmt: skip
        self.userinfo_requests: list[dict[str, str]] = []
        self.issued: list[str] = []  # every token the provider handed out
        self.access_tokens: dict[str, str] = {}  # access token -> subject
        self.refresh_tokens: dict[str, RefreshGrant] = {}  # live refresh tokens
        self.refresh_requests: list[dict[str, Any]] = []  # every refresh grant asked for
        # RFC 7662: opaque token -> the introspection answer (anything else: inactive).
        self.introspection: dict[str, dict[str, Any]] = {}
        self.revoked: list[dict[str, str]] = []  # every RFC 7009 request's form
        self.authorize_requests: list[dict[str, str]] = []  # every /authorize query
        self.pushed: dict[str, dict[str, str]] = {}  # RFC 9126: request_uri -> parameters
        # private_key_jwt: the client's registered public keys, and each assertion's claims.
        self.client_keys: list[Key] = []
        self.assertions: list[dict[str, Any]] = []
        # A second key set, published at /other-jwks: another issuer's keys.
        self.other_key = RSAKey.generate_key(2048, parameters={"kid": "other-1", "use": "sig"})
        self.app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/jwks", self.jwks),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
                Route("/end_session", self.end_session),
                Route("/userinfo", self.userinfo),
                Route("/introspect", self.introspect, methods=["POST"]),
                Route("/revoke", self.revoke, methods=["POST"]),
                Route("/other-jwks", self.other_jwks),
                Route("/par", self.par, methods=["POST"]),
            ]
        )

    # -- endpoints ------------------------------------------------------------------------

    async def discovery(self, request: Request) -> Response:
        self.calls["discovery"] += 1
        doc = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer.rstrip("/") + "/authorize",
            "token_endpoint": self.issuer.rstrip("/") + "/token",
            "jwks_uri": self.issuer.rstrip("/") + "/jwks",
            "end_session_endpoint": self.issuer.rstrip("/") + "/end_session",
            "userinfo_endpoint": self.issuer.rstrip("/") + "/userinfo",
            "introspection_endpoint": self.issuer.rstrip("/") + "/introspect",
            "revocation_endpoint": self.issuer.rstrip("/") + "/revoke",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
        }
        if self.behaviour.par:
            doc["pushed_authorization_request_endpoint"] = self.issuer.rstrip("/") + "/par"
        doc.update(self.behaviour.discovery_overrides)
        return JSONResponse(doc)

    async def jwks(self, request: Request) -> Response:
        self.calls["jwks"] += 1
        return JSONResponse({"keys": [k.as_dict(private=False) for k in self.published]})

    async def authorize(self, request: Request) -> Response:
        """Signs in ``self.subject`` at once and sends the browser back with a code."""
        q: Any = request.query_params
        self.authorize_requests.append(dict(q))
        if "request_uri" in q:
            # RFC 9126 §4: the pushed request stands in for the query, once, for its client.
            pushed = self.pushed.pop(q["request_uri"], None)
            if pushed is None or pushed.get("client_id") != q.get("client_id"):
                return JSONResponse({"error": "invalid_request_uri"}, status_code=400)
            q = pushed
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        code = secrets.token_urlsafe(24)
        self.grants[code] = Grant(
            client_id=q["client_id"],
            redirect_uri=q["redirect_uri"],
            code_challenge=q.get("code_challenge", ""),
            code_challenge_method=q.get("code_challenge_method", ""),
            nonce=q.get("nonce"),
            subject=self.subject,
        )
        params = {"code": code, "state": q.get("state", ""), "iss": self.issuer}
        return RedirectResponse(q["redirect_uri"] + "?" + urlencode(params), status_code=302)

    async def token(self, request: Request) -> Response:
        self.calls["token"] += 1
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        self.token_requests.append({"form": form, "headers": dict(request.headers)})
        b = self.behaviour
        if b.token_raw_body is not None:
            return HTMLResponse(b.token_raw_body)
        if b.token_status != 200 or b.token_body is not None:
            return JSONResponse(
                b.token_body or {"error": "server_error"}, status_code=b.token_status
            )
        if not self._client_authenticated(request, form, "/token"):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if form.get("grant_type") == "refresh_token":
            return await self._refresh(form)
        grant = self.grants.get(form.get("code", ""))
        if grant is None or grant.used or form.get("redirect_uri") != grant.redirect_uri:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        grant.used = True
        # RFC 7636 §4.6: the verifier must hash to the challenge.
        verifier = form.get("code_verifier", "")
        if grant.code_challenge_method != "S256" or (
            create_s256_code_challenge(verifier) != grant.code_challenge
        ):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        access_token = "at-" + secrets.token_urlsafe(16)
        self.access_tokens[access_token] = grant.subject
        refresh_token = "rt-" + secrets.token_urlsafe(16)
        self.refresh_tokens[refresh_token] = RefreshGrant(grant.subject, grant.nonce)
        tokens = {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "id_token": self.id_token(grant.nonce, grant.subject),
        }
        self.issued.extend(tokens.values())
        return self._tokens(tokens)

    async def _refresh(self, form: dict[str, str]) -> Response:
        """RFC 6749 §6, with rotation; OIDC Core §12.2's ID token (no nonce by default)."""
        self.refresh_requests.append(form)
        b = self.behaviour
        if b.refresh_delay:
            await asyncio.sleep(b.refresh_delay)
        if b.refresh_status != 200 or b.refresh_body is not None:
            body = b.refresh_body or {"error": "server_error"}
            return JSONResponse(body, status_code=b.refresh_status)
        old = form.get("refresh_token", "")
        grant = self.refresh_tokens.get(old)
        if grant is None:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        access_token = "at-" + secrets.token_urlsafe(16)
        self.access_tokens[access_token] = grant.subject
        tokens = {"access_token": access_token}
        if b.rotate_refresh_tokens:
            del self.refresh_tokens[old]
            tokens["refresh_token"] = "rt-" + secrets.token_urlsafe(16)
            self.refresh_tokens[tokens["refresh_token"]] = grant
        if b.refresh_id_token:
            claims = {"nonce": None, **b.refresh_id_token_claims}
            tokens["id_token"] = self.id_token(grant.nonce, grant.subject, refreshed=claims)
        self.issued.extend(tokens.values())
        if b.refresh_answer is not None:
            await b.refresh_answer.wait()
        return self._tokens(tokens)

    def _tokens(self, tokens: dict[str, str]) -> Response:
        body: dict[str, Any] = {**tokens, "token_type": "Bearer", **self.behaviour.token_overrides}
        if self.behaviour.expires_in is not None:
            body["expires_in"] = self.behaviour.expires_in
        return JSONResponse(body)

    def revoke_refresh_tokens(self) -> None:
        """The provider forgets every refresh token (an admin revoked the user's grants)."""
        self.refresh_tokens.clear()

    async def userinfo(self, request: Request) -> Response:
        self.calls["userinfo"] += 1
        self.userinfo_requests.append(dict(request.headers))
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        subject = self.access_tokens.get(token)
        if subject is None:
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return JSONResponse({"sub": subject, **self.profile, **self.behaviour.userinfo_claims})

    async def introspect(self, request: Request) -> Response:
        """RFC 7662 §2: for an authenticated client, the answer the test set, else inactive."""
        self.calls["introspect"] += 1
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if not self._client_authenticated(request, form, "/introspect"):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        return JSONResponse(self.introspection.get(form.get("token", ""), {"active": False}))

    async def revoke(self, request: Request) -> Response:
        """RFC 7009 §2: the refresh token's grant ends; 200 whether or not it was live."""
        self.calls["revoke"] += 1
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if not self._client_authenticated(request, form, "/revoke"):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        self.revoked.append(form)
        self.refresh_tokens.pop(form.get("token", ""), None)
        return Response(status_code=200)

    async def par(self, request: Request) -> Response:
        """RFC 9126 §2: an authenticated client pushes its authorization request."""
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if not self._client_authenticated(request, form, "/par"):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if "request_uri" in form:  # §2.1: a pushed request must not itself refer to one
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        params = {k: v for k, v in form.items() if not k.startswith("client_")}
        params["client_id"] = CLIENT_ID
        request_uri = "urn:ietf:params:oauth:request_uri:" + secrets.token_urlsafe(16)
        self.pushed[request_uri] = params
        return JSONResponse({"request_uri": request_uri, "expires_in": 60}, status_code=201)

    async def other_jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [self.other_key.as_dict(private=False)]})

    def access_token(
        self,
        *,
        key: Key | None = None,
        header: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        """An RFC 9068 JWT access token from this provider for https://api.test, signed with
        its RSA key: ``claims`` over the defaults, ``header`` over typ at+jwt (a value of None
        leaves a member out), ``drop`` claims left out."""
        now = int(self.clock())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "svc-ci",
            "aud": "https://api.test",
            "exp": now + 300,
            "iat": now,
            "client_id": "ci-bot",
            "email": "ci@example.com",
            "email_verified": True,
            "groups": ["ci"],
            **claims,
        }
        for name in drop:
            payload.pop(name, None)
        signer = key or self.rsa_key
        protected = {"alg": "RS256", "kid": signer.kid, "typ": "at+jwt", **(header or {})}
        protected = {k: v for k, v in protected.items() if v is not None}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            return jwt.encode(protected, payload, signer, algorithms=[protected["alg"]])

    async def end_session(self, request: Request) -> Response:
        return JSONResponse({"ended": True})

    # -- helpers --------------------------------------------------------------------------

    def _client_authenticated(self, request: Request, form: dict[str, str], path: str) -> bool:
        """client_secret_basic with the client's secret, or (RFC 7523 §3) a client assertion
        signed by one of ``client_keys`` for this endpoint, unexpired, its jti fresh."""
        if "client_assertion" in form:
            return self._assertion_valid(form, self.issuer.rstrip("/") + path)
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return (unquote(user), unquote(password)) == (CLIENT_ID, CLIENT_SECRET)

    def _assertion_valid(self, form: dict[str, str], audience: str) -> bool:
        if form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return False
        for key in self.client_keys:
            try:
                token = jwt.decode(form["client_assertion"], key, algorithms=["RS256", "ES256"])
            except JoseError:
                continue
            claims = dict(token.claims)
            seen = {a["jti"] for a in self.assertions}
            valid = (
                claims.get("iss") == claims.get("sub") == CLIENT_ID
                and claims.get("aud") == audience
                and isinstance(claims.get("exp"), int)
                and claims["exp"] > time.time()
                and claims.get("jti") not in seen
                and token.header.get("kid") == key.kid
            )
            if valid:
                self.assertions.append(claims)
            return valid
        return False

    def id_token(
        self, nonce: str | None, subject: str, refreshed: dict[str, Any] | None = None
    ) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": CLIENT_ID,
            "exp": now + 300,
            "iat": now,
            "nonce": nonce,
            "sid": self.sid,
            **self.profile,
        }
        b = self.behaviour
        claims.update(b.id_token_claims)
        for name in b.drop_claims:
            claims.pop(name, None)
        if refreshed is not None:
            # A refresh's ID token: these claims over the rest; one set to None is left out.
            claims.update(refreshed)
            claims = {k: v for k, v in claims.items() if v is not None}
        key = b.signing_key or (self.ec_key if b.alg.startswith("ES") else self.rsa_key)
        header = {"alg": b.alg, "kid": key.kid, **b.id_token_header}
        header = {k: v for k, v in header.items() if v is not None}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)  # EdDSA, superseded by RFC 9864
            return jwt.encode(header, claims, key, algorithms=[b.alg])

    def logout_token(self, drop: tuple[str, ...] = (), **overrides: Any) -> str:
        """A Back-Channel Logout 1.0 logout token for the current subject and sid."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 120,
            "jti": secrets.token_urlsafe(8),
            "sub": self.subject,
            "sid": self.sid,
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
            **overrides,
        }
        for name in drop:
            claims.pop(name, None)
        key = self.behaviour.signing_key or self.rsa_key
        header = {"alg": "RS256", "kid": key.kid, "typ": "logout+jwt"}
        return jwt.encode(header, claims, key, algorithms=["RS256"])
