"""/v1/jobs/{id}/checkpoints: trainers register what they published; people list them."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from service import ingest
from service.api.auth import JobReporterDep, ViewerDep
from service.api.deps import SessionDep
from service.api.routes.jobs import JobId
from service.api.schemas import CheckpointPublic, CheckpointReport
from service.db import repo

router = APIRouter(prefix="/jobs/{job_id}/checkpoints", tags=["checkpoints"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckpointPublic,
    responses={200: {"description": "Already registered."}, 409: {"description": "Conflicts with a registered one."}},
)
def register_checkpoint(
    job_id: JobId, body: CheckpointReport, session: SessionDep, principal: JobReporterDep, response: Response
) -> CheckpointPublic:
    """Register a published checkpoint (the job's own token); retries are harmless."""
    checkpoint, created = ingest.record_checkpoint(
        session, job_id=job_id, actor=principal.name, **body.model_dump()
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return CheckpointPublic.model_validate(checkpoint)


@router.get("", response_model=list[CheckpointPublic])
def list_checkpoints(job_id: JobId, session: SessionDep, _: ViewerDep) -> list[CheckpointPublic]:
    """The job's checkpoints, by step."""
    repo.get_job(session, job_id=job_id)
    return [CheckpointPublic.model_validate(c) for c in repo.list_checkpoints(session, job_id=job_id)]
