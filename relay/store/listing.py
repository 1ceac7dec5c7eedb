"""Sessions as an operator sees them: who, since when, until when. Read-only; for the
``relay sessions list`` command and GET /admin/sessions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select

from relay.crypto import short_hash
from relay.devices import describe
from relay.store.database import Database
from relay.store.models import sessions
from relay.store.records import ACTIVE, SignIn

MAX_PAGE = 1000


@dataclass(frozen=True)
class SessionRow:
    id_hash: str
    subject: str | None  # None for a pending login
    email: str | None
    state: str  # "active", "pending", or "expired" (waiting for the pruner)
    created_at: int
    last_accessed_at: int
    expires_at: int
    sign_in: SignIn = field(default_factory=SignIn)

    @property
    def short_id(self) -> str:
        return short_hash(self.id_hash)

    def public(self) -> dict[str, Any]:
        """As GET /admin/sessions and `relay sessions list --json` show it: the id as the logs
        name the session, times in epoch seconds."""
        return {
            "id": self.short_id,
            "subject": self.subject,
            "email": self.email,
            "state": self.state,
            "created_at": self.created_at,
            "last_accessed_at": self.last_accessed_at,
            "expires_at": self.expires_at,
            "device": describe(self.sign_in.user_agent),
            "user_agent": self.sign_in.user_agent,
            "address": self.sign_in.client_address,
            "provider": self.sign_in.provider,
            "acr": self.sign_in.acr,
            "amr": list(self.sign_in.amr),
            "auth_time": self.sign_in.auth_time,
        }


async def list_sessions(
    db: Database,
    now: int,
    *,
    subject: str | None = None,
    after: str | None = None,
    limit: int = MAX_PAGE,
) -> list[SessionRow]:
    """Up to ``limit`` rows ordered by id_hash, those after ``after`` (the last id_hash of the
    previous page): a page holds still while sessions come and go around it."""
    statement = _ROWS.order_by(sessions.c.id_hash).limit(max(1, min(limit, MAX_PAGE)))
    if subject is not None:
        statement = statement.where(sessions.c.subject == subject)
    if after is not None:
        statement = statement.where(sessions.c.id_hash > after)
    async with db.autocommit() as conn:
        rows = (await conn.execute(statement)).all()
    return [_row(row, now) for row in rows]


async def sessions_of(db: Database, subject: str, now: int) -> list[SessionRow]:
    """One person's live sessions, the most recently active first (their sessions page)."""
    statement = (
        _ROWS.where(
            sessions.c.subject == subject,
            sessions.c.status == ACTIVE,
            sessions.c.expires_at > now,
        )
        .order_by(sessions.c.last_accessed_at.desc(), sessions.c.id_hash)
        .limit(MAX_PAGE)
    )
    async with db.autocommit() as conn:
        return [_row(row, now) for row in (await conn.execute(statement)).all()]


async def find_sessions(db: Database, query: str, now: int, limit: int = 200) -> list[SessionRow]:
    """Live sessions whose subject is ``query`` or whose email starts with it (any case):
    the operator console's search. The email is found in the stored claims (JSON written
    by Sessions.create), so sessions from before any schema change are found too; a table
    scan, for a page an operator loads now and then."""
    email = json.dumps(query.lower())[:-1]  # '"bob@ex': as the claims JSON spells it, open
    pattern = '%"email":' + _like_escaped(email) + "%"
    statement = (
        _ROWS.where(
            sessions.c.status == ACTIVE,
            sessions.c.expires_at > now,
            or_(
                sessions.c.subject == query,
                func.lower(sessions.c.claims).like(pattern, escape="\\"),
            ),
        )
        .order_by(sessions.c.subject, sessions.c.last_accessed_at.desc())
        .limit(limit)
    )
    async with db.autocommit() as conn:
        return [_row(row, now) for row in (await conn.execute(statement)).all()]


def _like_escaped(text: str) -> str:
    """``text`` matching only itself in a LIKE pattern (escape character: backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_ROWS = select(
    sessions.c.id_hash,
    sessions.c.status,
    sessions.c.subject,
    sessions.c.claims,
    sessions.c.created_at,
    sessions.c.last_accessed_at,
    sessions.c.expires_at,
    sessions.c.user_agent,
    sessions.c.client_address,
    sessions.c.provider,
    sessions.c.acr,
    sessions.c.amr,
    sessions.c.auth_time,
)


def _row(row: Any, now: int) -> SessionRow:
    return SessionRow(
        id_hash=row.id_hash,
        subject=row.subject,
        email=_email(row.claims),
        state=row.status if row.expires_at > now else "expired",
        created_at=row.created_at,
        last_accessed_at=row.last_accessed_at,
        expires_at=row.expires_at,
        sign_in=SignIn(
            user_agent=row.user_agent,
            client_address=row.client_address,
            provider=row.provider,
            acr=row.acr,
            amr=_amr(row.amr),
            auth_time=row.auth_time,
        ),
    )


def _amr(stored: str | None) -> tuple[str, ...]:
    try:
        value = json.loads(stored) if stored else []
    except ValueError:
        return ()
    return tuple(m for m in value if isinstance(m, str)) if isinstance(value, list) else ()


def _email(claims: str | None) -> str | None:
    if not claims:
        return None
    try:
        value = json.loads(claims).get("email")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def printable(value: str) -> str:
    """``value`` safe to print on an operator's terminal: every character that is not
    printable (ESC and the other controls, bidirectional overrides, lone surrogates) and the
    backslash itself shown as a Python escape. Claims come from the provider and, through it,
    from users: a subject holding "\\x1b[2J" must not clear the screen or forge a line."""
    if value.isprintable() and "\\" not in value:
        return value
    return "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
        for c in value
    )


# A session named by the start of its hash, as the logs and `relay sessions list` show it
# (12 characters). Shorter than this names too many sessions to be a deliberate choice.
MIN_PREFIX = 8
_HEX = frozenset("0123456789abcdef")


class AmbiguousPrefix(Exception):
    """More than one active session's hash starts with the prefix: nothing was ended."""

    def __init__(self, matches: int) -> None:
        super().__init__(f"{matches} sessions match")
        self.matches = matches


def hash_prefix(value: str) -> str | None:
    """``value`` as a session hash prefix (lowercase hex, MIN_PREFIX to 64 characters), or
    None. Only hex gets through: the prefix goes into a LIKE pattern."""
    prefix = value.strip().lower()
    if not MIN_PREFIX <= len(prefix) <= 64 or not set(prefix) <= _HEX:
        return None
    return prefix
