"""What trainers report: checkpoints they published and the metrics they measured."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import func, select, tuple_
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import checkpoints, lifecycle
from service.db import repo
from service.db.models import (
    Attempt,
    AttemptState,
    Checkpoint,
    Job,
    LatestMetric,
    MetricPoint,
    utcnow,
)
from service.errors import Conflict, Forbidden, NotFound, ServiceError


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
    if lifecycle.is_terminal(job.state):
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


# --- metrics ---------------------------------------------------------------------------------------

# The columns a metric point is written with, in the order `metric_rows` yields them.
METRIC_COLUMNS = ("job_id", "attempt", "step", "name", "value", "nonfinite", "stage", "phase", "tokens", "created_at")
# What `latest_metrics` keeps of a job's newest point of each metric.
_LATEST_COLUMNS = ("job_id", "name", "attempt", "step", "value", "tokens", "created_at")
# Past the job's last step a record is only plausible as that step's eval, reported after it.
STEP_MARGIN = 1

_COPY = f"COPY metric_points ({', '.join(METRIC_COLUMNS)}) FROM STDIN"
_NULL = "\\N"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_ARRAY_TYPES = ("bigint", "int", "bigint", "text", "float8", "text", "text", "text", "bigint", "timestamptz")
_INSERT_NEW = (
    f"INSERT INTO metric_points ({', '.join(METRIC_COLUMNS)}) "
    f"SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in _ARRAY_TYPES)}) "
    "ON CONFLICT (job_id, attempt, step, name) DO NOTHING"
)


class RecordInvalid(ServiceError):
    """One record of a batch cannot be right for its job: the field and why, for a 422."""

    status_code = 422

    def __init__(self, index: int, field: str, message: str) -> None:
        super().__init__(message)
        self.index, self.field = index, field


def metric_rows(job_id: int, records: list[dict[str, Any]], created_at: datetime | None = None) -> list[tuple]:
    """One row per (attempt, step, name), in `METRIC_COLUMNS` order; NaN/Inf kept apart as text."""
    created_at = created_at or utcnow()
    rows = []
    for record in records:
        attempt, step = record["attempt"], record["step"]
        stage, phase, tokens = record.get("stage"), record.get("phase"), record.get("tokens")
        for name, value in record["metrics"].items():
            if value.__class__ is str:  # the wire's "NaN", "Infinity", "-Infinity"
                number, nonfinite = None, value
            elif math.isfinite(value):
                number, nonfinite = float(value), None
            else:
                number = None
                nonfinite = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
            rows.append((job_id, attempt, step, name, number, nonfinite, stage, phase, tokens, created_at))
    return rows


def store_metrics(
    session: Session, *, job_id: int, records: list[dict[str, Any]], token_attempt: int | None = None
) -> int:
    """Store a batch of one job's records; points already stored for (job, attempt, step, name)
    are kept as they are. Returns how many points were new.

    Every record must name the job, its newest attempt (the token's, for an attempt-scoped
    token) and a step the job can reach; a finished job takes no more. The job's row is share
    locked until the commit, so a rollback opening a new attempt waits for the batch, or the
    batch sees the new attempt and is refused.
    """
    _check_records(session, job_id=job_id, records=records, token_attempt=token_attempt)
    rows = metric_rows(job_id, records)
    if not rows:
        session.commit()  # the lock
        return 0
    dialect = session.get_bind().dialect.name
    stored = _insert_postgres(session, rows) if dialect == "postgresql" else _insert_sqlite(session, rows)
    if stored:
        _keep_latest(session, rows, dialect)
    session.commit()
    return stored


def _check_records(session: Session, *, job_id: int, records: list[dict[str, Any]], token_attempt: int | None) -> None:
    newest_attempt = select(func.max(Attempt.number)).where(Attempt.job_id == Job.id).scalar_subquery()
    found = session.execute(
        select(Job.state, Job.derived["total_train_iters"].as_integer(), newest_attempt)
        .where(Job.id == job_id)
        .with_for_update(read=True, key_share=True, of=Job)
    ).one_or_none()
    if found is None:
        raise NotFound(f"job {job_id} not found")
    state, total_steps, newest = found
    if lifecycle.is_terminal(state):
        raise Conflict(f"job {job_id} is {state}: it takes no more metrics")
    last_step = None if total_steps is None else total_steps - 1 + STEP_MARGIN
    job = str(job_id)
    for index, record in enumerate(records):
        attempt, step = record["attempt"], record["step"]
        if record["job"] != job:
            raise RecordInvalid(index, "job", f"record is for job {record['job']!r}, not {job_id}")
        if token_attempt is not None and attempt != token_attempt:
            raise Forbidden(f"this token reports for attempt {token_attempt} of job {job_id}, not attempt {attempt}")
        if newest is None or attempt > newest:
            raise Conflict(f"job {job_id} has no attempt {attempt}")
        if attempt < newest:
            raise Conflict(f"job {job_id} attempt {attempt} was superseded by attempt {newest}")
        if last_step is not None and step > last_step:
            raise RecordInvalid(index, "step", f"step {step} is past job {job_id}'s last step ({total_steps} steps)")


def _insert_postgres(session: Session, rows: list[tuple]) -> int:
    """COPY the rows straight in (the common case: all new); a batch with a stored point falls
    back to one INSERT ... ON CONFLICT DO NOTHING, whose row count is what was new."""
    driver = session.connection().connection.driver_connection  # psycopg 3
    try:
        # Inside the session's transaction, psycopg's own transaction() is a savepoint.
        with driver.transaction(), driver.cursor() as cursor, cursor.copy(_COPY) as copy:
            copy.write(_copy_text(rows))
        return len(rows)
    except psycopg.errors.UniqueViolation:
        pass  # a retried batch, or part of one: the savepoint undid the COPY
    with driver.cursor() as cursor:
        cursor.execute(_INSERT_NEW, [list(column) for column in zip(*rows, strict=True)])
        return cursor.rowcount


def _copy_text(rows: list[tuple]) -> str:
    """The rows in COPY's text format. Written here, not by psycopg's `write_row`, which adapts
    every value by its type at about three times the CPU, and the API's CPU is one process."""
    escaped: dict[str | None, str] = {None: _NULL}
    stamped, stamp = None, ""

    def text(value: str | None) -> str:
        found = escaped.get(value)
        if found is None:
            found = escaped[value] = value.translate(_COPY_ESCAPES)
        return found

    lines = []
    for job_id, attempt, step, name, value, nonfinite, stage, phase, tokens, created_at in rows:
        if created_at is not stamped:  # one batch, one timestamp
            stamped, stamp = created_at, created_at.isoformat()
        lines.append(
            f"{job_id}\t{attempt}\t{step}\t{text(name)}\t{_NULL if value is None else repr(value)}\t"
            f"{text(nonfinite)}\t{text(stage)}\t{text(phase)}\t{_NULL if tokens is None else tokens}\t"
            f"{stamp}\n"
        )
    return "".join(lines)


def _keep_latest(session: Session, rows: list[tuple], dialect: str) -> None:
    """Move `latest_metrics` to the batch's newest point of each metric, in the batch's
    transaction, so that /metrics reads those rows and never the points.

    Only a later (attempt, step) replaces a row: a point stored before (a retried batch, which
    keeps the stored point) or one older than the row changes nothing. Rows are written in
    name order, so two batches of one job lock them in the same order.
    """
    newest: dict[str, tuple] = {}
    for row in rows:
        _, attempt, step, name = row[:4]
        kept = newest.get(name)
        if kept is None or (attempt, step) > (kept[1], kept[2]):
            newest[name] = row
    values = [
        {column: value for column, value in zip(METRIC_COLUMNS, newest[name], strict=True) if column in _LATEST_COLUMNS}
        for name in sorted(newest)
    ]
    table = LatestMetric.__table__
    statement = (postgres_insert if dialect == "postgresql" else sqlite_insert)(table).values(values)
    later = tuple_(table.c.attempt, table.c.step) < tuple_(statement.excluded.attempt, statement.excluded.step)
    replaced = {column: statement.excluded[column] for column in _LATEST_COLUMNS if column not in ("job_id", "name")}
    session.execute(statement.on_conflict_do_update(index_elements=["job_id", "name"], set_=replaced, where=later))


def _insert_sqlite(session: Session, rows: list[tuple]) -> int:
    statement = sqlite_insert(MetricPoint.__table__).on_conflict_do_nothing(
        index_elements=["job_id", "attempt", "step", "name"]
    )
    # Without RETURNING, an executemany's row count is the sum of what each row inserted.
    result = session.connection().execute(statement, [dict(zip(METRIC_COLUMNS, row, strict=True)) for row in rows])
    return result.rowcount
