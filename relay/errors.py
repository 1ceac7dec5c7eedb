"""The relay's exceptions, all rendered by one handler (``relay.pages.error_response``).

    RelayError                    status, a fixed public message, a log reason
    ├── BadRequest          400   the browser sent something we refuse (bad state, bad code...)
    ├── Unauthorized        401   no valid session
    │   ├── InvalidBearer   401   an API caller's token failed a check (relay/bearer.py)
    │   │   └── InsufficientAuthentication 401  ...or was issued for too weak a sign-in
    │   └── StepUpRequired  401   the route needs a stronger or fresher sign-in (step_up.py)
    ├── Forbidden           403   a cross-origin logout and the like
    │   ├── AccessDenied    403   signed in, but the [access] rules say no (relay/access.py)
    │   └── TokenRefused    403   an API caller's valid token, but the rules say no
    ├── NotFound            404   a page that is switched off (the console without operators)
    ├── TooManyRequests     429   a browser or client address starting too many logins
    ├── DatabaseUnavailable 503   the database failed, refused or took too long (store/database.py)
    ├── Misconfigured       503   the relay's own configuration is wrong: only its operator can
    │                             fix it (a refused client secret, replicas with different secrets)
    └── ProviderError             the identity provider failed us
        ├── ProviderUnavailable  503   discovery or a connection failed
        ├── ProviderTimeout      504   the provider did not answer in time
        └── ProviderBadResponse  502   the provider answered 5xx or nonsense

The public message never contains provider text or exception details; ``reason`` is a short
machine-readable slug for the log, ``detail`` free text for the log only.
"""

from __future__ import annotations


class RelayError(Exception):
    status = 500
    public_message = "Something went wrong."
    challenge: str | None = None  # the WWW-Authenticate header (RFC 9110 §11.6.1)

    def __init__(self, reason: str, detail: str = "", *, public_message: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        if public_message is not None:
            self.public_message = public_message


class BadRequest(RelayError):
    status = 400
    public_message = "The sign-in could not be completed. Please start again."

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        public_message: str | None = None,
        start_again: str = "login",
    ) -> None:
        super().__init__(reason, detail, public_message=public_message)
        # Relative: refusals come from /login and /callback, siblings under any prefix.
        self.start_again = start_again


class Unauthorized(RelayError):
    status = 401
    public_message = "You are not signed in."
    challenge = "Cookie"


class InvalidBearer(Unauthorized):
    """RFC 6750 §3.1 invalid_token: expired, revoked, malformed, or not for us."""

    public_message = "The access token is not valid here."
    challenge = 'Bearer error="invalid_token"'


class StepUpRequired(Unauthorized):
    """The session is signed in, but not strongly or recently enough for this route: a new
    login, asking the provider for ``asked`` (relay/step_up.py), is the way on."""

    public_message = "This page needs you to sign in again, more strongly or more recently."

    def __init__(self, reason: str, asked: dict[str, str]) -> None:
        super().__init__(reason)
        self.asked = asked


class InsufficientAuthentication(InvalidBearer):
    """RFC 9470 §3: the token is valid, but its sign-in does not meet the route's acr or
    max_age; the challenge says what would."""

    public_message = "The access token's sign-in is not strong or recent enough here."

    def __init__(self, reason: str, asked: dict[str, str]) -> None:
        super().__init__(reason)
        parts = ['Bearer error="insufficient_user_authentication"']
        if "acr" in asked:
            parts.append(f'acr_values="{asked["acr"].replace(",", " ")}"')
        if "max_age" in asked:
            parts.append(f'max_age="{asked["max_age"]}"')
        self.challenge = ", ".join(parts)


class Forbidden(RelayError):
    status = 403
    public_message = "This request is not allowed."


class AccessDenied(Forbidden):
    """Signed in, but the access rules say no: the page says which rule, and offers a
    sign-out to try another account."""

    def __init__(self, reason: str, message: str, detail: str, sign_out_url: str) -> None:
        super().__init__(
            reason, detail, public_message=f"You are signed in, but not allowed here. {message}"
        )
        self.sign_out_url = sign_out_url


class TokenRefused(Forbidden):
    """RFC 6750 §3.1 insufficient_scope: a valid token whose claims the access rules refuse."""

    public_message = "The access token does not allow this request."
    challenge = 'Bearer error="insufficient_scope"'


class NotFound(RelayError):
    status = 404
    public_message = "Not found."


class TooManyRequests(RelayError):
    status = 429
    public_message = "Too many sign-ins are in progress. Please finish or wait a few minutes."


class DatabaseUnavailable(RelayError):
    status = 503
    public_message = "Sign-in is briefly unavailable. Please try again in a moment."


class Misconfigured(RelayError):
    status = 503
    public_message = (
        "The sign-in service is misconfigured. Please tell its operator, quoting the request id "
        "below; trying again will not help until it is fixed."
    )


class ProviderError(RelayError):
    status = 502
    public_message = "The identity provider did not answer properly. Please try again later."


class ProviderUnavailable(ProviderError):
    status = 503
    public_message = "The identity provider is unavailable. Please try again later."


class ProviderTimeout(ProviderError):
    status = 504
    public_message = "The identity provider took too long to answer. Please try again later."


class ProviderBadResponse(ProviderError):
    status = 502
