"""What a login asked the provider for beyond the config, for the callback to hold the ID
token to: the acr values and the max_age a route's step-up demanded (relay/step_up.py).
Pending logins only; empty for every other row.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("asked_acr", sa.String(255)),  # space-separated
    ("asked_max_age", sa.BigInteger),
)


def upgrade() -> None:
    for name, type_ in _COLUMNS:
        op.add_column("sessions", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
