"""/v1/jobs/{id}/checkpoints: trainers register what they published; people list them."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.exceptions import RequestValidationError

from service import checkpoints, ingest
from service.api.auth import JobReporterDep, ViewerDep
from service.api.deps import JobId, SessionDep, SettingsDep
from service.api.schemas import (
    CheckpointPublic,
    CheckpointRegistered,
    CheckpointReport,
    CheckpointToPrune,
)
from service.db import repo

router = APIRouter(prefix="/jobs/{job_id}/checkpoints", tags=["checkpoints"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckpointRegistered,
    responses={
        200: {"description": "Already registered."},
        403: {"description": "Another job's or another attempt's token."},
        409: {"description": "Conflicts with a registered one, the job is finished, or the attempt ended."},
    },
)
def register_checkpoint(
    job_id: JobId,
    body: CheckpointReport,
    session: SessionDep,
    settings: SettingsDep,
    principal: JobReporterDep,
    response: Response,
) -> CheckpointRegistered:
    """Register a published checkpoint (the attempt's own token); answers what to delete. Retries are harmless."""
    if principal.attempt is not None and body.attempt != principal.attempt:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this token belongs to attempt {principal.attempt} of job {job_id}, not attempt {body.attempt}",
        )
    job = repo.get_job(session, job_id=job_id)
    directory = checkpoints.job_directory(job.id, job.name, settings)
    if (problem := checkpoints.report_path_problem(body.path, directory)) is not None:
        # A registered path is what a later attempt restores: it must be this job's own.
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "path"), "msg": problem, "input": body.path}]
        )
    registration = ingest.record_checkpoint(session, job_id=job_id, actor=principal.name, **body.model_dump())
    if not registration.created:
        response.status_code = status.HTTP_200_OK
    return CheckpointRegistered(
        **CheckpointPublic.model_validate(registration.checkpoint).model_dump(),
        prune=[
            CheckpointToPrune(
                path=c.path, step=c.step, attempt=c.attempt, manifest_sha256=c.meta["manifest_sha256"]
            )
            for c in registration.prune
        ],
    )


@router.get("", response_model=list[CheckpointPublic])
def list_checkpoints(job_id: JobId, session: SessionDep, _: ViewerDep) -> list[CheckpointPublic]:
    """The job's checkpoints, by step."""
    repo.get_job(session, job_id=job_id)
    return [CheckpointPublic.model_validate(c) for c in repo.list_checkpoints(session, job_id=job_id)]
