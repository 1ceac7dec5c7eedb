"""How many refresh grants were sent for a session and never answered: the invalid_grant that
follows one of those may be the provider having rotated the refresh token then, not a
revocation (relay/refresh.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows from before know of no grant left unanswered.
    op.add_column(
        "sessions",
        sa.Column("refresh_unsettled", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("refresh_unsettled")
