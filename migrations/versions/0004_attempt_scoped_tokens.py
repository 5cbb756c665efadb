"""attempt-scoped tokens, checkpoint unusable reason, attempt outcome

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns: existing tokens stay job-wide, existing checkpoints keep no reason,
    # existing attempts have no trainer outcome on record.
    op.add_column("api_tokens", sa.Column("attempt", sa.Integer(), nullable=True))
    op.add_column("checkpoints", sa.Column("unusable_reason", sa.Text(), nullable=True))
    op.add_column("attempts", sa.Column("outcome", sa.String(length=32), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+), as 0003 does.
    op.drop_column("attempts", "outcome")
    op.drop_column("checkpoints", "unusable_reason")
    op.drop_column("api_tokens", "attempt")
