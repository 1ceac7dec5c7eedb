"""What a session records at sign-in, for the person's sessions page, the operator's console,
`relay sessions list` and the admin API: the browser's User-Agent (bounded), its address
(as [session] record_address allows), the provider that signed it in, and what that provider
said about the sign-in (acr, amr, auth_time). All empty for sessions from before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("user_agent", sa.String(512)),
    ("client_address", sa.String(64)),
    ("provider", sa.String(255)),
    ("acr", sa.String(255)),
    ("amr", sa.String(255)),  # JSON list
    ("auth_time", sa.BigInteger),
)


def upgrade() -> None:
    for name, type_ in _COLUMNS:
        op.add_column("sessions", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
