"""/v1/jobs/{id}/evaluations: benchmark scores of a job's checkpoints; evaluations report them."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from service import evaluations
from service.api.auth import EvaluationReporterDep, ViewerDep
from service.api.deps import JobId, SessionDep
from service.api.schemas import EvaluationPublic, EvaluationReport, EvaluationsPublic
from service.db import repo
from service.tokens import evaluation_token_name

router = APIRouter(prefix="/jobs/{job_id}/evaluations", tags=["evaluations"])


@router.get("", response_model=EvaluationsPublic, responses={404: {"description": "No such job."}})
def list_evaluations(job_id: JobId, session: SessionDep, _: ViewerDep) -> EvaluationsPublic:
    """Every benchmark of every chosen checkpoint: its state and scores, by step then task."""
    repo.get_job(session, job_id=job_id)
    rows = evaluations.list_evaluations(session, job_id=job_id)
    return EvaluationsPublic(evaluations=[EvaluationPublic.model_validate(row) for row in rows])


@router.post(
    "",
    response_model=EvaluationsPublic,
    responses={
        403: {"description": "Not this evaluation's token."},
        404: {"description": "No such job, or no evaluation of that step."},
        409: {"description": "The evaluation already failed, or a task it was not asked for."},
    },
)
def report_evaluation(
    job_id: JobId, body: EvaluationReport, session: SessionDep, principal: EvaluationReporterDep
) -> EvaluationsPublic:
    """Store the scores of one checkpoint step (the evaluation's own token). Retries are harmless."""
    if principal.job_id is not None and principal.name != evaluation_token_name(job_id, body.step):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this token does not report the evaluation of step {body.step}",
        )
    rows = evaluations.record_results(
        session,
        job_id=job_id,
        step=body.step,
        results=[score.model_dump() for score in body.results],
        actor=principal.name,
    )
    return EvaluationsPublic(evaluations=[EvaluationPublic.model_validate(row) for row in rows])
