"""/v1/jobs/{id}/rollback: on-call sends a run back to a good checkpoint, skipping bad data."""

from __future__ import annotations

from fastapi import APIRouter, status

from service.api.auth import OncallDep
from service.api.deps import JobId, NotifierDep, SessionDep, SettingsDep
from service.api.routes.jobs import public_job
from service.api.schemas import CheckpointPublic, RollbackCreate, RollbackPublic
from service.checkpoints import CheckpointStorage
from service.db import repo
from service.db.models import AttemptReason
from service.watchdog.rollback import RollbackRequest, roll_back

router = APIRouter(prefix="/jobs/{job_id}/rollback", tags=["rollback"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RollbackPublic,
    responses={404: {"description": "No such job."}, 409: {"description": "Finished, no checkpoint, or a racing rollback won."}},
)
def rollback(job_id: JobId, body: RollbackCreate, session: SessionDep, settings: SettingsDep, notifier: NotifierDep, principal: OncallDep) -> RollbackPublic:
    """Open a new attempt from a good checkpoint with a data skip range (on-call)."""
    # Without `attempt`, the caller rolls back the attempt current as the request arrives: a
    # rollback that lands first (another person's, the watchdog's) makes this one a 409.
    expected = body.attempt if body.attempt is not None else repo.get_job(session, job_id=job_id).attempts[-1].number
    outcome = roll_back(
        session,
        job_id=job_id,
        request=RollbackRequest(
            onset_step=body.to_step,
            reason=AttemptReason.ONCALL,
            why=body.reason,
            actor=principal.name,
            expected_attempt=expected,
            to_step=body.to_step,
            skip_steps=body.skip_steps,
            lr_scale=body.lr_scale,
        ),
        storage=CheckpointStorage.from_settings(settings),
    )
    notifier.job_changed(job_id, f"rollback-{outcome.attempt}")
    return RollbackPublic(
        job=public_job(session, outcome.job),
        attempt=outcome.attempt,
        checkpoint=CheckpointPublic.model_validate(outcome.checkpoint) if outcome.checkpoint else None,
        skip_range=outcome.skip_range,
        paused=outcome.paused,
    )
