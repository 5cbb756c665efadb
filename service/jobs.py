"""What people ask of a job (submit, cancel, its result): each one transaction with its event."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import attempts, lifecycle
from service.admission import OverMemory, admit
from service.controller.workload import render_problems
from service.db import repo
from service.db.models import (
    AttemptReason,
    AttemptState,
    DesiredState,
    Job,
    Role,
)
from service.errors import Conflict, Forbidden
from service.settings import Settings
from service.spec import BATCH_KINDS, SpecInvalid
from service.tokens import Principal


def spec_hash(spec: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a spec, so identical submissions are recognisable."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Submission:
    """An admitted spec with everything stored beside it, made before the database is touched."""

    name: str
    kind: str
    spec: dict[str, Any]
    derived: dict[str, Any]
    warnings: list[dict[str, Any]]
    plan: dict[str, Any] | None


def submit_job(
    session: Session, *, raw: dict[str, Any], principal: Principal, settings: Settings | None = None
) -> Job:
    """Admit a spec (`admit_submission`) and store the job with a pending attempt 0, or nothing."""
    return store_submission(session, admit_submission(raw, settings=settings), principal=principal)


def admit_submission(raw: dict[str, Any], *, settings: Settings | None = None) -> Submission:
    """Admit a spec (`admission.admit`): CPU work only, so the API runs it before taking a session.

    With `settings` (the API always passes its own), attempt 0 is rendered once for the installed
    backend, by the builder the controller launches with: a spec that validates but could not
    be launched here is refused now, naming the field, instead of failing at launch.
    """
    admission = admit(raw, over_memory=OverMemory.REFUSE, settings=settings)
    validated = admission.validated
    submission = Submission(
        name=validated.spec.name,
        kind=validated.spec.kind,
        spec=validated.spec.model_dump(mode="json"),
        derived=admission.derived_document,
        warnings=[w.model_dump(mode="json") for w in admission.warnings],
        plan=admission.plan_document,
    )
    if settings is not None:
        problems = render_problems(
            job_name=submission.name,
            kind=submission.kind,
            spec=submission.spec,
            derived=submission.derived,
            plan=submission.plan,
            settings=settings,
        )
        if problems:
            raise SpecInvalid(problems)
    return submission


def store_submission(session: Session, submission: Submission, *, principal: Principal) -> Job:
    """Store an admitted spec as a job with a pending attempt 0, in one transaction; 409 on a live name."""
    name = submission.name
    try:
        job = repo.add_job(
            session,
            name=name,
            kind=submission.kind,
            owner=principal.name,
            spec=submission.spec,
            spec_hash=spec_hash(submission.spec),
            derived=submission.derived,
            warnings=submission.warnings,
            plan=submission.plan,
        )
        repo.add_attempt(session, job=job, number=0, reason=AttemptReason.LAUNCH)
        repo.add_event(
            session,
            kind="job.submitted",
            actor=principal.name,
            job_id=job.id,
            attempt=0,
            data={"spec_hash": job.spec_hash, "warnings": len(job.warnings)},
        )
        session.commit()
    except IntegrityError as exc:
        # The partial unique index on live names decides, race-free; look up who holds the name.
        session.rollback()
        holder = repo.find_active_job_by_name(session, name=name, active_states=lifecycle.ACTIVE_JOB_STATES)
        if holder is None:
            raise
        raise Conflict(f"a job named {name!r} is already {holder.state} (job {holder.id})") from exc
    return job


def cancel_job(session: Session, *, job_id: int, principal: Principal, reason: str | None) -> Job:
    """Ask for a job to stop; a job with nothing running is cancelled at once."""
    job = repo.get_job(session, job_id=job_id, for_update=True)
    if job.owner != principal.name and not principal.may(Role.ONCALL):
        raise Forbidden(
            f"job {job_id} belongs to {job.owner}; only its owner or on-call may cancel it"
        )
    if lifecycle.is_terminal(job.state) or job.desired_state == DesiredState.CANCELLED:
        raise Conflict(f"job {job_id} is already {job.state}")
    job.desired_state = DesiredState.CANCELLED
    nothing_running = all(a.state == AttemptState.PENDING or a.finished_at for a in job.attempts)
    if nothing_running:
        for attempt in job.attempts:
            if attempt.state == AttemptState.PENDING:
                attempts.end_attempt(
                    session,
                    job=job,
                    attempt=attempt,
                    state=AttemptState.CANCELLED,
                    actor=principal.name,
                    reason="job cancelled",
                    event=False,  # job.cancelled below says it
                )
        transition, reason = lifecycle.CANCEL, reason or "cancelled before it started"
    else:
        transition = lifecycle.REQUEST_CANCEL
    lifecycle.move(
        session,
        job,
        transition,
        actor=principal.name,
        reason=reason,
        attempt=job.attempts[-1].number if job.attempts else None,
    )
    session.commit()
    return job


def record_result(
    session: Session,
    *,
    job_id: int,
    attempt: int,
    path: str,
    report: dict[str, Any],
    actor: str,
) -> Job:
    """Store what a tokenizer or data job's attempt made; a retried report replaces the first.

    The workload reports before it exits, so by the time it has succeeded the result is here.
    """
    job = repo.get_job(session, job_id=job_id, for_update=True)
    if job.kind not in BATCH_KINDS:
        raise Conflict(
            f"job {job_id} is a {job.kind} job; only tokenizer and data jobs report a result"
        )
    if lifecycle.is_terminal(job.state):
        raise Conflict(f"job {job_id} is already {job.state}")
    current = job.attempts[-1].number
    if attempt != current:
        raise Conflict(f"job {job_id} is at attempt {current}, not {attempt}")
    job.result = {"attempt": attempt, "path": path, "report": report}
    repo.add_event(
        session,
        kind="result.reported",
        actor=actor,
        job_id=job.id,
        attempt=attempt,
        data={"path": path},
    )
    session.commit()
    return job

