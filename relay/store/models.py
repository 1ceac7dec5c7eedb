"""The schema, as SQLAlchemy Core tables (the migrations in migrations/ are the source of truth).

One table holds every login from start to end. A row is ``pending`` from /login until /callback
consumes it, and an ``active`` session after. Rows are keyed by the SHA-256 of a random value
the browser holds (the state for a pending login, the cookie for a session), never the value.
Timestamps are whole seconds since the epoch, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text, text

metadata = MetaData()

sessions = Table(
    "sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # "pending" | "active"
    # Pending rows: which browser started the login (hash of the binding cookie) and what it needs.
    Column("binding_hash", String(64), nullable=True),
    Column("client_hash", String(64), nullable=True),  # hash of the client address, if known
    Column("nonce", String(128), nullable=True),
    Column("code_verifier", Text, nullable=True),  # sealed
    Column("return_to", Text, nullable=True),
    # Active rows: who signed in, and the provider's tokens (sealed).
    Column("subject", String(255), nullable=True),
    Column("sid", String(255), nullable=True),  # the provider's session, for back-channel logout
    Column("claims", Text, nullable=True),  # JSON: the identity the headers and /userinfo need
    Column("id_token", Text, nullable=True),
    Column("access_token", Text, nullable=True),
    Column("refresh_token", Text, nullable=True),
    Column("access_expires_at", BigInteger, nullable=True),  # None: the provider did not say
    Column("refresh_lease_until", BigInteger, nullable=True),  # a replica is refreshing until
    # Refresh grants sent and never answered (timed out, connection dropped, replica gone)
    # since the last answer: the provider may have rotated the refresh token in one of them.
    Column("refresh_unsettled", Integer, nullable=False, server_default=text("0")),
    # What the session recorded at sign-in (store/records.py SignIn), for the people who look
    # at sessions (the sessions page, the console, the CLI): never read on the hot path.
    Column("user_agent", String(512), nullable=True),
    Column("client_address", String(64), nullable=True),  # as [session] record_address allows
    Column("provider", String(255), nullable=True),  # the issuer that signed the session in
    Column("acr", String(255), nullable=True),
    Column("amr", String(255), nullable=True),  # JSON list
    Column("auth_time", BigInteger, nullable=True),
    # A pending login's step-up (relay/step_up.py): what the ID token must then show.
    Column("asked_acr", String(255), nullable=True),  # space-separated
    Column("asked_max_age", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("last_accessed_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_sessions_expires_at", "expires_at"),
    Index("ix_sessions_binding_hash", "binding_hash"),
    Index("ix_sessions_client_hash", "client_hash"),
    Index("ix_sessions_status_created_at", "status", "created_at"),
    Index("ix_sessions_sid", "sid"),
    Index("ix_sessions_subject", "subject"),
)

# Back-channel logout tokens already accepted, by the hash of their jti, kept until the token
# could no longer be accepted anyway (its age past the maximum): a replay is refused.
logout_tokens = Table(
    "logout_tokens",
    metadata,
    Column("jti_hash", String(64), primary_key=True),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_logout_tokens_expires_at", "expires_at"),
)

# Sessions that ended, for a SQLite relay to read (relay/store/sqlite_watch.py): written by
# triggers (migrations/versions/0006_ended_sessions.py), in the ending's own transaction,
# whoever ends the session; kept KEEP seconds there by the pruner. Empty on PostgreSQL.
ended_sessions = Table(
    "ended_sessions",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id_hash", String(64), nullable=False),
    Column("ended_at", BigInteger, nullable=False),
    Index("ix_ended_sessions_ended_at", "ended_at"),
    sqlite_autoincrement=True,
)
