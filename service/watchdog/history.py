"""Trainer records rebuilt from the stored metric points: what the watchdog catches up from.

Postgres (`metric_points`) is the truth; the stream only carries records faster. A record is
one (attempt, step, phase) of a job, its points gathered back under their names, in the order
they were stored. Reading is paged by whole steps, so a long-silent watchdog never holds more
than a page of a job's history at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from service.db.models import Job, MetricPoint
from service.lifecycle import ACTIVE_JOB_STATES

PAGE_POINTS = 20_000

_COLUMNS = (
    MetricPoint.attempt,
    MetricPoint.step,
    MetricPoint.phase,
    MetricPoint.name,
    MetricPoint.value,
    MetricPoint.nonfinite,
    MetricPoint.stage,
    MetricPoint.tokens,
)


def newest_steps(session: Session) -> dict[int, tuple[int, int] | None]:
    """Every live job's newest stored (attempt, step), None for a job with no points yet: one
    query, two index probes a job."""
    newest = (
        select(MetricPoint.attempt, MetricPoint.step)
        .where(MetricPoint.job_id == Job.id)
        .order_by(MetricPoint.attempt.desc(), MetricPoint.step.desc())
        .limit(1)
    )
    query = (
        select(Job.id, newest.with_only_columns(MetricPoint.attempt).scalar_subquery(), newest.with_only_columns(MetricPoint.step).scalar_subquery())
        .where(Job.state.in_(ACTIVE_JOB_STATES))
        .order_by(Job.id)
    )
    return {job_id: None if attempt is None else (attempt, step) for job_id, attempt, step in session.execute(query)}


def stored_records(
    session: Session, *, job_id: int, since: tuple[int, int] | None, limit: int = PAGE_POINTS
) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
    """A page of the job's records from (attempt, step) `since` on (all when None), in step
    order, and where the next page starts (None when this was the last)."""
    query = select(*_COLUMNS).where(MetricPoint.job_id == job_id)
    if since is not None:
        query = query.where(tuple_(MetricPoint.attempt, MetricPoint.step) >= since)
    order = (MetricPoint.attempt, MetricPoint.step, MetricPoint.id)
    rows = session.execute(query.order_by(*order).limit(limit)).all()
    if len(rows) < limit:
        return _records(job_id, rows), None
    last = (rows[-1].attempt, rows[-1].step)
    whole = [row for row in rows if (row.attempt, row.step) != last]
    if whole:  # the last step may go on past the page: it starts the next one
        return _records(job_id, whole), last
    # One step holds the whole page: read that step alone, then go on after it.
    rows = session.execute(
        select(*_COLUMNS)
        .where(MetricPoint.job_id == job_id, MetricPoint.attempt == last[0], MetricPoint.step == last[1])
        .order_by(MetricPoint.id)
    ).all()
    return _records(job_id, rows), (last[0], last[1] + 1)


def _records(job_id: int, rows: Sequence[Any]) -> list[dict[str, Any]]:
    job = str(job_id)
    records: dict[tuple[int, int, str | None], dict[str, Any]] = {}
    for attempt, step, phase, name, value, nonfinite, stage, tokens in rows:
        record = records.get((attempt, step, phase))
        if record is None:
            record = records[(attempt, step, phase)] = {
                "job": job,
                "attempt": attempt,
                "step": step,
                "stage": stage,
                "phase": phase,
                "tokens": tokens,
                "metrics": {},
            }
        record["metrics"][name] = nonfinite if nonfinite is not None else value
    return list(records.values())
