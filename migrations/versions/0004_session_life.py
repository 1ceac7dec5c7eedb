"""A session's whole life: when its access token expires and who is refreshing it, and the
back-channel logout tokens already used (so a replay is refused).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # When the access token stops working (None: the provider did not say).
    op.add_column("sessions", sa.Column("access_expires_at", sa.BigInteger, nullable=True))
    # A refresh in progress, claimed by one replica until then (None: nobody refreshing).
    op.add_column("sessions", sa.Column("refresh_lease_until", sa.BigInteger, nullable=True))
    op.create_table(
        "logout_tokens",
        sa.Column("jti_hash", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_logout_tokens_expires_at", "logout_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_logout_tokens_expires_at", table_name="logout_tokens")
    op.drop_table("logout_tokens")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("refresh_lease_until")
        batch.drop_column("access_expires_at")
