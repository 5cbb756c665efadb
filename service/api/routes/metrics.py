"""/v1/jobs/{id}/metrics: the trainer's metric stream in; series out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool

from service import ingest
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
) -> list[MetricPointPublic]:
    """Stored points by name, then step."""
    repo.get_job(session, job_id=job_id)
    points = repo.metric_points(
        session, job_id=job_id, names=name or (), attempt=attempt, min_step=min_step, max_step=max_step, limit=limit
    )
    return [MetricPointPublic.model_validate(p) for p in points]
