"""checkpoints the service told a trainer to delete

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: no checkpoint registered so far was handed to a trainer for deletion.
    op.add_column("checkpoints", sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("checkpoints", sa.Column("pruned_by", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+), as 0003 and 0004 do.
    op.drop_column("checkpoints", "pruned_by")
    op.drop_column("checkpoints", "pruned_at")
