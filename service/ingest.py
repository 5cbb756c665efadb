"""What trainers report: checkpoints they published and the metrics they measured."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from sqlalchemy import insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import checkpoints
from service.db import repo
from service.db.models import AttemptState, Checkpoint, JobState, MetricPoint
from service.errors import Conflict

NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class Registration(NamedTuple):
    """A registered checkpoint, whether this call stored it, and what the trainer should delete."""

    checkpoint: Checkpoint
    created: bool
    prune: list[Checkpoint]


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
) -> Registration:
    """Register a published checkpoint once and apply the retention rule in the same transaction.

    A retried report returns the stored row and the same prune list. A checkpoint of an attempt
    a rollback superseded is stored unusable with an empty prune list: it was trained on the
    data the rollback skips (a save on SIGTERM, or one that raced the rollback). A finished job,
    or an attempt that ended otherwise, registers nothing (Conflict).
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
        return Registration(existing, False, checkpoints.pruned_with(session, job=job, registered=existing))
    if JobState(job.state).is_terminal:
        raise Conflict(f"job {job_id} is already {job.state}")
    current = job.attempts[-1]
    superseded = reporter.state == AttemptState.SUPERSEDED
    if reporter is not current and not superseded:
        raise Conflict(f"job {job_id} is at attempt {current.number}; attempt {attempt} is {reporter.state}")
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
        checkpoints.mark_overwritten(repo.list_checkpoints(session, job_id=job_id), checkpoint)
        if superseded:
            checkpoints.mark_unusable(
                checkpoint, f"superseded: attempt {attempt} was replaced by attempt {current.number}"
            )
            prune: list[Checkpoint] = []
        else:
            prune = checkpoints.retain(session, job=job, registered=checkpoint)
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
                "unusable_reason": checkpoint.unusable_reason,
                "prune": [{"checkpoint_id": c.id, "step": c.step, "path": c.path} for c in prune],
            },
        )
        session.commit()
    except IntegrityError:
        # A retry of the same report raced us to the insert; the stored row answers both.
        session.rollback()
        existing = repo.find_checkpoint(session, job_id=job_id, attempt=attempt, step=step)
        if existing is None or existing.meta.get("manifest_sha256") != manifest_sha256:
            raise
        job = repo.get_job(session, job_id=job_id)
        return Registration(existing, False, checkpoints.pruned_with(session, job=job, registered=existing))
    return Registration(checkpoint, True, prune)


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
