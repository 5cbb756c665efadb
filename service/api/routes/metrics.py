"""/v1/jobs/{id}/metrics: the trainer's metric stream in; series out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool

from service import ingest, observability
from service.api.auth import JobReporterDep, ViewerDep
from service.api.deps import SessionDep, SettingsDep
from service.api.routes.jobs import JobId
from service.api.schemas import MetricPointPublic, MetricRecord, MetricsAccepted
from service.db import repo
from service.watchdog import consumer as watchdog

router = APIRouter(prefix="/jobs/{job_id}/metrics", tags=["metrics"])

MAX_RECORDS_PER_BATCH = 5_000


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=MetricsAccepted)
async def ingest_metrics(
    job_id: JobId,
    records: Annotated[list[MetricRecord], Body(max_length=MAX_RECORDS_PER_BATCH)],
    session: SessionDep,
    settings: SettingsDep,
    _: JobReporterDep,
) -> MetricsAccepted:
    """Store a batch of trainer records (the job's own token); a retried batch changes nothing."""
    for index, record in enumerate(records):
        if record.job != str(job_id):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                [{"loc": ["body", index, "job"], "msg": f"record is for job {record.job!r}, not {job_id}", "type": "value_error"}],
            )
    raw = [r.model_dump() for r in records]
    stored = await run_in_threadpool(ingest.store_metrics, session, job_id=job_id, records=raw)
    observability.INGESTED_POINTS.inc(sum(len(r.metrics) for r in records))
    # Stored first, then watched: the history is never behind what the watchdog acted on.
    await run_in_threadpool(watchdog.feed, settings, raw)
    return MetricsAccepted(received=sum(len(r.metrics) for r in records), stored=stored)


@router.get("", response_model=list[MetricPointPublic])
def read_metrics(
    job_id: JobId,
    session: SessionDep,
    _: ViewerDep,
    name: Annotated[list[str] | None, Query(max_length=50, description="Metric names, e.g. loss, loss/zh.")] = None,
    attempt: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
    min_step: Annotated[int | None, Query(ge=0, le=2**53)] = None,
    max_step: Annotated[int | None, Query(ge=0, le=2**53)] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    max_points: Annotated[int | None, Query(ge=2, le=100_000, description="Downsample each series to about this many points (first and last kept).")] = None,
) -> list[MetricPointPublic]:
    """Stored points by name, then step; long ranges downsampled per series on request."""
    repo.get_job(session, job_id=job_id)
    points = repo.metric_points(
        session, job_id=job_id, names=name or (), attempt=attempt, min_step=min_step, max_step=max_step, limit=limit
    )
    if max_points is not None:
        points = _downsample(points, max_points)
    return [MetricPointPublic.model_validate(p) for p in points]


def _downsample(points, max_points: int):
    """Every k-th point of each series, keeping its last (a month-long run has 10^6 steps)."""
    by_name: dict[str, list] = {}
    for point in points:
        by_name.setdefault(point.name, []).append(point)
    kept = []
    for series in by_name.values():
        stride = -(-len(series) // max_points)
        sample = series[::stride]
        if sample[-1] is not series[-1]:
            sample.append(series[-1])
        kept.extend(sample)
    return kept
