"""jobs waiting in a Kueue queue (state queued) hold their name as live jobs do

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# States are stored as plain strings: only the partial unique index on live names lists them.
BEFORE = "state IN ('pending', 'running', 'paused', 'cancelling')"
AFTER = "state IN ('pending', 'queued', 'running', 'paused', 'cancelling')"


def _replace_index(old: str, new: str) -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_jobs_active_name", postgresql_where=sa.text(old), sqlite_where=sa.text(old)
        )
        batch_op.create_index(
            "uq_jobs_active_name",
            ["name"],
            unique=True,
            postgresql_where=sa.text(new),
            sqlite_where=sa.text(new),
        )


def upgrade() -> None:
    _replace_index(BEFORE, AFTER)


def downgrade() -> None:
    # A queued job is pending again to the old schema (it waits for its workload to start).
    op.execute("UPDATE jobs SET state = 'pending' WHERE state = 'queued'")
    _replace_index(AFTER, BEFORE)
