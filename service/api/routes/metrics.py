"""/v1/jobs/{id}/metrics: the trainer's metric stream in; series out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from service import ingest, observability
from service.api.auth import JobReporterDep, ViewerDep
from service.api.deps import JobId, SessionDep, SettingsDep
from service.api.schemas import (
    MAX_RECORDS_PER_BATCH,
    MetricBatch,
    MetricPointPublic,
    MetricRecord,
    MetricsAccepted,
)
from service.db import repo
from service.settings import Settings
from service.tokens import Principal
from service.watchdog import consumer as watchdog

# The embedded default judges records in-process: its watchdog is built and caught up at start.
router = APIRouter(prefix="/jobs/{job_id}/metrics", tags=["metrics"], lifespan=watchdog.lifespan)

# The handler reads the body itself (one pass from raw JSON, see MetricRecord); this documents it.
METRICS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "maxItems": MAX_RECORDS_PER_BATCH,
                    "items": {"title": "MetricRecord", **TypeAdapter(MetricRecord).json_schema()},
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=MetricsAccepted,
    openapi_extra=METRICS_BODY,
    responses={
        409: {"description": "The job is finished, or the records' attempt is not its newest."},
        503: {"description": "The watchdog could not take the records; they are stored, send them again."},
    },
)
async def ingest_metrics(
    job_id: JobId,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: JobReporterDep,
) -> MetricsAccepted:
    """Store a batch of trainer records (the job's own token); a retried batch changes nothing."""
    body = await request.body()
    local = None if settings.redis_url else watchdog.in_process(request.app)
    return await run_in_threadpool(_ingest, session, settings, principal, job_id, body, local)


def _ingest(
    session: Session,
    settings: Settings,
    principal: Principal,
    job_id: int,
    body: bytes,
    local: watchdog.InProcess | None,
) -> MetricsAccepted:
    try:
        records: list[dict[str, Any]] = MetricBatch.validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False, include_input=False)]
        ) from None
    try:
        stored = ingest.store_metrics(session, job_id=job_id, records=records, token_attempt=principal.attempt)
    except ingest.RecordInvalid as exc:
        loc = ("body", exc.index, exc.field)
        raise RequestValidationError([{"type": "value_error", "loc": loc, "msg": str(exc)}]) from None
    received = sum(len(record["metrics"]) for record in records)
    observability.INGESTED_POINTS.inc(received)
    # Stored first, then watched: the history is never behind what the watchdog acted on. The
    # body goes to the stream as it came: it is exactly the records just validated.
    try:
        watchdog.feed(settings, records, raw=body, local=local)
    except watchdog.WatchdogUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "1"}) from exc
    return MetricsAccepted(received=received, stored=stored)


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
