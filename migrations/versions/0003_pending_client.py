"""Pending logins remember which client address started them (its hash), so the relay can
cap them per address across replicas; an index on (status, created_at) finds the oldest
pending logins to drop when the table is full.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("client_hash", sa.String(64), nullable=True))
    op.create_index("ix_sessions_client_hash", "sessions", ["client_hash"])
    op.create_index("ix_sessions_status_created_at", "sessions", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_status_created_at", table_name="sessions")
    op.drop_index("ix_sessions_client_hash", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("client_hash")
