"""What /auth tells the app about the user: the X-Auth-Request-* headers of a 200, from the
session's claims as [headers] maps them (and the groups from access.groups_claim).

Each value is the claim's text exactly, as the rules judged it, or empty (relay/exact.py).
"""

from __future__ import annotations

from typing import Any

from relay.access import Access, claim, strings
from relay.config import HeadersConfig
from relay.exact import flaw, listed
from relay.store.records import ActiveSession

_EMPTY_TEXT = ((b"content-length", b"0"), (b"content-type", b"text/plain; charset=utf-8"))


class IdentityHeaders:
    def __init__(self, config: HeadersConfig, access: Access) -> None:
        self._access = access
        self._user = tuple(config.user_claim.split("."))
        self._email = tuple(config.email_claim.split("."))
        self._username = tuple(config.preferred_username_claim.split("."))
        self._extra = [
            (header.encode("ascii"), tuple(path.split(".")))
            for header, path in config.extra.items()
        ]
        self._pass_token = config.pass_access_token
        self._bearer = config.set_authorization_header

    def render(self, session: ActiveSession) -> list[tuple[bytes, bytes]]:
        """The whole header list of a 200 from /auth: an empty text body and who is signed in."""
        claims = session.claims
        email = _text(claim(claims, self._email))
        username = _text(claim(claims, self._username))
        user = _text(claim(claims, self._user)) or email or session.subject
        # Every header, always, empty when unknown: a proxy that copies them onto the upstream
        # request then replaces a header the client forged instead of letting it through.
        identity = [
            (b"x-auth-request-subject", session.subject),
            (b"x-auth-request-user", user),
            (b"x-auth-request-email", email),
            (b"x-auth-request-preferred-username", username),
            (b"x-auth-request-groups", ",".join(self._access.groups(claims))),
        ]
        identity.extend((header, _text(claim(claims, path))) for header, path in self._extra)
        rendered = [*_EMPTY_TEXT, *((name, _header_value(value)) for name, value in identity)]
        # The token as stored: the shortcut's memo is per ActiveSession, and a refresh makes a
        # new one, so the app always gets the current token. A token is ASCII (RFC 6749 A.12).
        token = session.access_token
        if self._pass_token:
            # Always sent, empty without a token: copied by the proxy, it replaces a forgery.
            rendered.append((b"x-auth-request-access-token", _token(token)))
        if self._bearer and token:
            rendered.append((b"authorization", b"Bearer " + _token(token)))
        return rendered


def _text(value: Any) -> str:
    """A claim as header text: a string as is, a list of strings comma-joined (those with a
    comma left out, as for the groups), a number or boolean spelled as in JSON; anything else
    (an object) is not for a header."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return ",".join(listed(strings(value)))


def _token(token: str | None) -> bytes:
    if not token or not token.isascii() or not token.isprintable():
        return b""  # not a token a header can carry
    return token.encode("ascii")


def _header_value(value: str) -> bytes:
    # The claim exactly, or nothing: never a stripped "ali\tce" that reaches the app as
    # alice. Access refuses every session with such a value before its headers are sent; the
    # shortcut renders before it judges, so this does meet them. Non-ASCII values go out as
    # UTF-8 bytes, as the provider sent them.
    if flaw(value) is not None:
        return b""
    return value.encode("utf-8")
