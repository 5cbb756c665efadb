"""What trainers report: checkpoints they published and the metrics they measured."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db import repo
from service.db.models import AttemptState, Checkpoint, MetricPoint
from service.errors import Conflict

NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def record_checkpoint(
    session: Session,
    *,
    job_id: int,
    attempt: int,
    step: int,
    tokens: int,
    path: str,
    manifest_sha256: str,
    actor: str,
) -> tuple[Checkpoint, bool]:
    """Register a published checkpoint once; a retried report returns the stored row unchanged.

    A checkpoint of an attempt a rollback superseded is stored unusable: it was trained on
    the data the rollback skips (a save on SIGTERM, or one that raced the rollback).
    """
    # The job's row lock serialises this with a rollback (which takes it too), so a checkpoint
    # is either there for the rollback to mark unusable or sees its attempt superseded.
    job = repo.get_job(session, job_id=job_id, for_update=True)
    reporter = next((a for a in job.attempts if a.number == attempt), None)
    if reporter is None:
        raise Conflict(f"job {job_id} has no attempt {attempt}")
    existing = repo.find_checkpoint(session, job_id=job_id, attempt=attempt, step=step)
    if existing is not None:
        if existing.meta.get("manifest_sha256") != manifest_sha256:
            raise Conflict(
                f"job {job_id} attempt {attempt} already registered a different checkpoint at step {step}"
            )
        return existing, False
    try:
        checkpoint = repo.add_checkpoint(
            session,
            job_id=job_id,
            attempt=attempt,
            step=step,
            tokens=tokens,
            path=path,
            meta={"manifest_sha256": manifest_sha256},
        )
        if reporter.state == AttemptState.SUPERSEDED:
            checkpoint.usable = False
        repo.add_event(
            session,
            kind="checkpoint.published",
            actor=actor,
            job_id=job_id,
            attempt=attempt,
            data={
                "checkpoint_id": checkpoint.id,
                "step": step,
                "tokens": tokens,
                "path": path,
                "usable": checkpoint.usable,
            },
        )
        _mark_pruned(session, job=job)
        session.commit()
    except IntegrityError:
        # A retry of the same report raced us to the insert; the stored row answers both.
        session.rollback()
        existing = repo.find_checkpoint(session, job_id=job_id, attempt=attempt, step=step)
        if existing is None or existing.meta.get("manifest_sha256") != manifest_sha256:
            raise
        return existing, False
    return checkpoint, True


def metric_rows(job_id: int, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten trainer records into one row per (attempt, step, name); NaN/Inf kept apart."""
    rows = []
    for record in records:
        for name, value in record["metrics"].items():
            nonfinite = value if isinstance(value, str) else None
            number = NONFINITE[value] if nonfinite else float(value)
            if nonfinite is None and not math.isfinite(number):
                nonfinite = (
                    "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
                )
            rows.append(
                {
                    "job_id": job_id,
                    "attempt": record["attempt"],
                    "step": record["step"],
                    "name": name,
                    "value": None if nonfinite else number,
                    "nonfinite": nonfinite,
                    "stage": record.get("stage"),
                    "phase": record.get("phase"),
                    "tokens": record.get("tokens"),
                }
            )
    return rows


def store_metrics(session: Session, *, job_id: int, records: list[dict[str, Any]]) -> int:
    """Insert metric points; a point already stored for (job, attempt, step, name) is kept as is."""
    repo.get_job(session, job_id=job_id)
    rows = metric_rows(job_id, records)
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement = pg_insert(MetricPoint).on_conflict_do_nothing(
            index_elements=["job_id", "attempt", "step", "name"]
        )
    elif dialect == "sqlite":
        statement = sqlite_insert(MetricPoint).on_conflict_do_nothing(
            index_elements=["job_id", "attempt", "step", "name"]
        )
    else:  # pragma: no cover - only the two databases above are supported
        statement = insert(MetricPoint)
    # RETURNING yields only the rows actually inserted: duplicates of a retried batch drop out.
    stored = len(session.execute(statement.returning(MetricPoint.id), rows).all())
    session.commit()
    return stored


def _mark_pruned(session: Session, *, job) -> None:
    """Mirror the trainer's pruning: beyond the newest `keep_last`, a checkpoint is gone from disk.

    The trainer keeps the newest `checkpoint.keep_last` plus any it was told to pin (the one
    each attempt resumed from); everything else it deletes, so it must not be offered for a
    rollback.
    """
    keep_last = job.spec.get("checkpoint", {}).get("keep_last", 3)
    pinned = {a.resume_from_checkpoint_id for a in job.attempts if a.resume_from_checkpoint_id}
    checkpoints = repo.list_checkpoints(session, job_id=job.id)
    live = [c for c in checkpoints if c.usable and c.id not in pinned]
    for old in live[: max(0, len(live) - keep_last)]:
        old.usable = False
