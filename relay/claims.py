"""Which of a token's claims describe the user: what a session keeps, and what a bearer
token's caller is judged and named by. A leaf: records, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Claims about the token rather than the user: not kept with a session. Everything else is,
# so that a rule or header added later can use any claim without a new login.
PROTOCOL_CLAIMS = frozenset(
    {"iss", "aud", "exp", "iat", "nbf", "nonce", "at_hash", "c_hash", "s_hash", "azp", "jti", "sid"}
)


def identity(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The claims kept with a session: the user's, not the token's."""
    return {name: value for name, value in claims.items() if name not in PROTOCOL_CLAIMS}
