"""The two cookies the relay sets, and how they are named.

- the session cookie: an opaque 256-bit id; the table holds only its hash.
- the login cookie: one per browser, binding every login it has in flight to it (login CSRF
  protection), however many tabs start one; it holds an opaque id, too.

With cookie_secure and no cookie_domain the names take the ``__Host-`` prefix, which browsers
accept only from a secure origin, for Path=/ and without Domain: no sibling subdomain can
plant or overwrite them.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from relay.config import SessionConfig
from relay.crypto import looks_like_id


@dataclass(frozen=True)
class CookiePolicy:
    session_name: str
    login_name: str
    secure: bool
    domain: str | None

    @classmethod
    def from_config(cls, config: SessionConfig) -> CookiePolicy:
        prefix = "__Host-" if config.cookie_secure and not config.cookie_domain else ""
        return cls(
            session_name=prefix + config.cookie_name,
            login_name=prefix + config.cookie_name + "_login",
            secure=config.cookie_secure,
            domain=config.cookie_domain,
        )

    def session_id(self, request: Request) -> str | None:
        return _read(request, self.session_name)

    def login_id(self, request: Request) -> str | None:
        return _read(request, self.login_name)

    def set_session(self, response: Response, value: str, max_age: int) -> None:
        self._set(response, self.session_name, value, max_age)

    def set_login(self, response: Response, value: str, max_age: int) -> None:
        self._set(response, self.login_name, value, max_age)

    def clear_session(self, response: Response) -> None:
        response.delete_cookie(
            self.session_name,
            path="/",
            domain=self.domain,
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )

    def _set(self, response: Response, name: str, value: str, max_age: int) -> None:
        # SameSite=Lax, not Strict: the provider sends the browser back with a top-level
        # cross-site GET to /callback, and the login cookie must come along.
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            domain=self.domain,
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )


def _read(request: Request, name: str) -> str | None:
    return cookie_id(request.headers.get("cookie"), name)


def cookie_id(header: str | None, name: str) -> str | None:
    """Our id from a Cookie header, as Starlette reads cookies (the first Cookie header; of
    two cookies with one name, the last), without parsing the others: this runs on every
    forward-auth check. Anything not shaped like one of our ids is not looked up at all."""
    if header is None or name not in header:
        return None
    value = None
    for chunk in header.split(";"):
        key, sep, candidate = chunk.partition("=")
        if sep and key.strip() == name:
            value = candidate.strip()
    if value is None or not looks_like_id(value):
        return None
    return value
