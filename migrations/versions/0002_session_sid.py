"""Sessions remember the provider's session id (sid) for back-channel logout.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("sid", sa.String(255), nullable=True))
    # A logout token names a sid, a subject, or both: find their sessions without a scan.
    op.create_index("ix_sessions_sid", "sessions", ["sid"])
    op.create_index("ix_sessions_subject", "sessions", ["subject"])


def downgrade() -> None:
    op.drop_index("ix_sessions_subject", table_name="sessions")
    op.drop_index("ix_sessions_sid", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("sid")
