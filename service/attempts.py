"""Attempts: a job runs as a sequence of them; opening or ending one is a transaction with its event.

An attempt's ingest token lives exactly as long as the attempt: ending it (succeeded, failed,
cancelled, superseded) revokes the token in the same transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service import checkpoints, lifecycle
from service.db import repo
from service.db.models import (
    Attempt,
    AttemptReason,
    AttemptState,
    Checkpoint,
    DesiredState,
    Job,
    JobState,
)
from service.errors import Conflict
from service.lifecycle import TERMINAL_ATTEMPT_STATES
from service.tokens import Principal


def open_attempt(
    session: Session,
    *,
    job: Job,
    reason: AttemptReason,
    actor: str,
    why: str,
    resume_from: Checkpoint | None,
    skip_ranges: list[list[int]] | None = None,
    lr_scale: float | None = None,
) -> Attempt:
    """Attempt N+1, resuming from `resume_from`; skip ranges and LR scale carry over unless given.

    The caller commits: the attempt and its event land together or not at all.
    """
    previous = job.attempts[-1] if job.attempts else None
    if previous is not None and previous.state not in TERMINAL_ATTEMPT_STATES:
        end_attempt(
            session,
            job=job,
            attempt=previous,
            state=AttemptState.SUPERSEDED,
            actor=actor,
            reason=f"superseded by attempt {previous.number + 1}: {why}",
            event=False,  # attempt.opened below says it
        )
    attempt = repo.add_attempt(
        session,
        job=job,
        number=previous.number + 1 if previous else 0,
        reason=reason,
        resume_from_checkpoint_id=resume_from.id if resume_from else None,
        skip_ranges=skip_ranges
        if skip_ranges is not None
        else list(previous.skip_ranges if previous else []),
        lr_scale=lr_scale if lr_scale is not None else (previous.lr_scale if previous else 1.0),
    )
    repo.add_event(
        session,
        kind="attempt.opened",
        actor=actor,
        job_id=job.id,
        attempt=attempt.number,
        reason=why,
        data={
            "reason": reason.value,
            "resume_from": {
                "checkpoint_id": resume_from.id,
                "step": resume_from.step,
                "path": resume_from.path,
            }
            if resume_from
            else None,
            "skip_ranges": attempt.skip_ranges,
            "lr_scale": attempt.lr_scale,
        },
    )
    return attempt


def end_attempt(
    session: Session,
    *,
    job: Job,
    attempt: Attempt,
    state: AttemptState,
    actor: str,
    reason: str | None = None,
    outcome: str | None = None,
    data: dict[str, Any] | None = None,
    event: bool = True,
) -> None:
    """Finish an attempt: its state, why, the trainer's outcome if known, and its token revoked.

    The caller commits. `event` False: the caller's own event tells the story.
    """
    if outcome is not None:
        attempt.outcome = outcome
    lifecycle.move_attempt(
        session, job, attempt, state, actor=actor, reason=reason, data=data, event=event
    )


def pause_job(session: Session, *, job_id: int, principal: Principal, reason: str | None) -> Job:
    """Stop the job's workload but keep the job: `resume` continues from its newest checkpoint."""
    job = repo.get_job(session, job_id=job_id, for_update=True)
    if lifecycle.is_terminal(job.state):
        raise Conflict(f"job {job_id} is already {job.state}")
    if job.desired_state != DesiredState.RUNNING:
        raise Conflict(f"job {job_id} is already {job.desired_state}")
    job.desired_state = DesiredState.PAUSED
    repo.add_event(
        session, kind="job.pause_requested", actor=principal.name, job_id=job.id, reason=reason
    )
    session.commit()
    return job


def resume_job(session: Session, *, job_id: int, principal: Principal, reason: str | None) -> Job:
    """Open a new attempt from the newest good checkpoint of a paused job."""
    job = repo.get_job(session, job_id=job_id, for_update=True)
    if job.state != JobState.PAUSED:
        raise Conflict(f"job {job_id} is {job.state}, not paused")
    checkpoint = checkpoints.choose(session, job_id=job_id)
    open_attempt(
        session,
        job=job,
        reason=AttemptReason.RESUME,
        actor=principal.name,
        why=reason or "resumed on request",
        resume_from=checkpoint,
    )
    job.desired_state = DesiredState.RUNNING
    lifecycle.move(session, job, lifecycle.RESUME, actor=principal.name, reason=reason)
    session.commit()
    return job
