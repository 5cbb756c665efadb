"""each job's newest point per metric, kept by ingest for /metrics

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "latest_metrics",
        sa.Column("job_id", BIG_ID, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("tokens", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_latest_metrics_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "name", name=op.f("pk_latest_metrics")),
    )
    # The points stored so far: each job's newest (attempt, step) of every metric, once.
    op.execute(
        "INSERT INTO latest_metrics (job_id, name, attempt, step, value, tokens, created_at) "
        "SELECT p.job_id, p.name, p.attempt, p.step, p.value, p.tokens, p.created_at "
        "FROM metric_points p WHERE NOT EXISTS (SELECT 1 FROM metric_points q "
        "WHERE q.job_id = p.job_id AND q.name = p.name "
        "AND (q.attempt > p.attempt OR (q.attempt = p.attempt AND q.step > p.step)))"
    )


def downgrade() -> None:
    op.drop_table("latest_metrics")
