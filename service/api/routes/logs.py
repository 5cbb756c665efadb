"""/v1/jobs/{id}/logs: the trainer log of one attempt, read through the backend that ran it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from service.api.auth import ViewerDep
from service.api.deps import MAX_ID, LogReaderDep, SessionDep, SettingsDep
from service.api.routes.jobs import JobId
from service.api.schemas import LogsPublic
from service.db import repo
from service.errors import NotFound

router = APIRouter(prefix="/jobs/{job_id}/logs", tags=["logs"])


@router.get(
    "",
    response_model=LogsPublic,
    responses={
        404: {"description": "No such job or attempt, or the attempt has not started."},
        501: {"description": "The backend cannot serve logs through the API."},
    },
)
def read_logs(
    job_id: JobId,
    session: SessionDep,
    settings: SettingsDep,
    backend: LogReaderDep,
    _: ViewerDep,
    attempt: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Attempt number; default the current one.")] = None,
    tail: Annotated[int | None, Query(ge=1, le=1_000_000, description="Only the last this many lines.")] = None,
) -> LogsPublic:
    """The trainer log of the job's current attempt, or of `attempt`."""
    job = repo.get_job(session, job_id=job_id)
    number = job.attempts[-1].number if attempt is None else attempt
    if number not in {a.number for a in job.attempts}:
        raise NotFound(f"job {job_id} has no attempt {number}")
    if backend is None:
        raise HTTPException(
            status.HTTP_501_NOT_IMPLEMENTED,
            f"the {settings.backend} backend does not serve trainer logs through the API; read them "
            f"with: kubectl logs -n {settings.namespace} -l pretrain.io/job-id={job_id},pretrain.io/attempt={number}",
        )
    text = backend.logs(job_id, number, tail=tail)
    if text is None:
        raise NotFound(f"attempt {number} of job {job_id} has no log: it has not started")
    return LogsPublic(job_id=job_id, attempt=number, text=text)
