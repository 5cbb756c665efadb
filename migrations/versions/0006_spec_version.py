"""the schema version each job's spec is stored as

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every spec stored so far was written as version 1 (service.jobspec.SPEC_VERSION); the
    # server default says so for the existing rows, and for any row written without one.
    op.add_column(
        "jobs", sa.Column("spec_version", sa.Integer(), server_default=sa.text("1"), nullable=False)
    )


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+), as 0003 to 0005 do: a batch rebuild of `jobs` would
    # have to carry its partial unique index over by hand.
    op.drop_column("jobs", "spec_version")
