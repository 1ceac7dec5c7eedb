"""Ended sessions, logged for a SQLite relay: SQLite has no NOTIFY, so triggers write every
active session that ends (its row deleted, marked other than active, or its expiry moved
earlier) to ``ended_sessions`` in the ending's own transaction, whoever ends it. A running
relay reads the log when PRAGMA data_version says another connection committed
(relay/store/sqlite_watch.py). On PostgreSQL the table stays empty: NOTIFY does that job.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A row that had already expired needs no announcement (every reader judges expiry from the
# timestamps): the pruner's batches stay out of the log.
_LIVE = "OLD.status = 'active' AND OLD.expires_at > CAST(strftime('%s', 'now') AS INTEGER)"
_LOG = (
    "INSERT INTO ended_sessions (id_hash, ended_at)"
    " VALUES (OLD.id_hash, CAST(strftime('%s', 'now') AS INTEGER))"
)
TRIGGERS = {
    "sessions_ended_by_delete": f"AFTER DELETE ON sessions WHEN {_LIVE}",
    # A touch moves expires_at forward and is not logged: only an ending is.
    "sessions_ended_by_update": (
        "AFTER UPDATE OF status, expires_at ON sessions"
        f" WHEN {_LIVE} AND (NEW.status IS NOT 'active' OR NEW.expires_at < OLD.expires_at)"
    ),
}


def upgrade() -> None:
    op.create_table(
        "ended_sessions",
        # AUTOINCREMENT: numbers never reused and, with one writer at a time, without gaps, so
        # a reader can tell entries it never saw (pruned meanwhile) from entries never written.
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("ended_at", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_ended_sessions_ended_at", "ended_sessions", ["ended_at"])
    if op.get_bind().dialect.name == "sqlite":
        for name, when in TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {when} BEGIN {_LOG}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_index("ix_ended_sessions_ended_at", table_name="ended_sessions")
    op.drop_table("ended_sessions")
