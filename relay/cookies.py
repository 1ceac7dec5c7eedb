"""The two cookies the relay sets, and how they are named.

- the session cookie: an opaque 256-bit id; the table holds only its hash.
- the login cookie: one per browser, binding the login it has in flight to it (login CSRF
  protection); an opaque id too, a fresh one on every /login, so a value someone else planted
  never binds the browser's own login.

With cookie_secure and no cookie_domain the names take the ``__Host-`` prefix, which browsers
accept only from a secure origin, for Path=/ and without Domain: no sibling subdomain can
plant or overwrite them. Without it, a sibling can set a second cookie of the same name (its
own Domain or Path) that the browser sends beside ours; a request carrying two of one name is
never answered from either (see ``cookie_id``).
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

    def duplicated(self, request: Request) -> bool:
        """Whether the request carries two cookies of our session name, or of our login name:
        one of them was set by someone else (a sibling subdomain, an http:// page)."""
        header = request.headers.get("cookie")
        return _twice(header, self.session_name) or _twice(header, self.login_name)

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
    """Our id from a Cookie header (the first Cookie header, as Starlette reads it), without
    parsing the others: this runs on every forward-auth check. Anything not shaped like one of
    our ids is not looked up at all, and neither is a name sent twice: the browser orders
    cookies by path length and age, not by who set them, so picking one (Starlette keeps the
    last) would let a planted cookie win."""
    if header is None or name not in header:
        return None
    value = None
    for chunk in header.split(";"):
        key, sep, candidate = chunk.partition("=")
        if sep and key.strip() == name:
            if value is not None:
                return None
            value = candidate.strip()
    if value is None or not looks_like_id(value):
        return None
    return value


def _twice(header: str | None, name: str) -> bool:
    if header is None or name not in header:
        return False
    names = (chunk.partition("=")[0].strip() for chunk in header.split(";"))
    return sum(1 for key in names if key == name) > 1
