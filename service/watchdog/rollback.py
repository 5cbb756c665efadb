"""Rollback: back to the last good checkpoint, skip the bad data, resume as a new attempt.

One transaction does it all, under the job's row lock: choose the newest verified checkpoint
at least `rollback_margin_steps` before the anomaly's onset (or the step asked for), mark the
checkpoints after it unusable, and open attempt N+1 resuming from it with a data skip range
and an LR scale; the controller then replaces the workload. More than `max_rollbacks` within
`rollback_window_steps` pauses the job and says it needs a person, instead of looping.

Only another rollback wins a race: an attempt the controller opened after a pod failure or a
preemption of the attempt being rolled back is superseded by the rollback, not in its way.

Skip ranges live in the trainer's batch-index space (see `batch_index`): until a first skip,
batch index equals step; after one, steps are mapped through the ranges already in force.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from service import attempts, checkpoints, lifecycle
from service.checkpoints import CheckpointStorage, Rejection
from service.db import repo
from service.db.models import AttemptReason, Checkpoint, DesiredState, Job
from service.errors import Conflict
from service.spec import PRETRAIN_KIND, WatchdogSpec
from trainer.ranges import batch_index, merge_ranges


@dataclass(frozen=True)
class RollbackRequest:
    """What to roll back from: an anomaly's onset (watchdog, trainer) or a step chosen by on-call."""

    onset_step: int | None  # None: the newest checkpoint's step (on-call's "roll back the latest")
    reason: AttemptReason  # rollback (watchdog, trainer) or oncall
    why: str
    actor: str
    # The attempt the caller judged: another rollback opened since means it lost the race; a
    # restart opened since (pod failure, preemption) does not stand in the way, it is superseded.
    expected_attempt: int | None = None
    to_step: int | None = None  # on-call: resume from the newest checkpoint at or before it
    skip_steps: int | None = None  # steps of data to skip after the checkpoint (default: policy)
    lr_scale: float | None = None
    evidence: dict | None = None


@dataclass(frozen=True)
class RollbackOutcome:
    job: Job
    attempt: int | None  # the new attempt, or None when the job was paused instead
    checkpoint: Checkpoint | None
    skip_range: list[int] | None
    paused: bool


def roll_back(
    session: Session,
    *,
    job_id: int,
    request: RollbackRequest,
    storage: CheckpointStorage | None = None,
    commit: bool = True,
) -> RollbackOutcome:
    """Apply a rollback in one transaction; Conflict when it cannot or another won the race.

    With `storage` (where this process reads the checkpoint volume) a candidate checkpoint that is
    missing or does not match its manifest is marked unusable and the next older one is taken;
    the event says which were passed over. `commit=False` leaves it all in the caller's
    transaction (the watchdog saves its state with it, the controller its records).
    """
    job = repo.get_job(session, job_id=job_id, for_update=True)
    current = job.attempts[-1]
    if job.kind != PRETRAIN_KIND:
        raise Conflict(
            f"job {job_id} is a {job.kind} job: it keeps no checkpoints and cannot be rolled back"
        )
    if lifecycle.is_terminal(job.state):
        raise Conflict(f"job {job_id} is already {job.state}")
    if request.expected_attempt is not None:
        _check_not_raced(job, request.expected_attempt)
    policy = job.watchdog
    newest_step = max((c.step for c in repo.list_checkpoints(session, job_id=job_id)), default=0)
    onset_step = request.onset_step if request.onset_step is not None else newest_step
    if _recent_rollbacks(session, job, onset_step, policy) >= policy.max_rollbacks:
        return _pause_for_a_person(session, job, request, onset_step, policy, commit)

    if request.to_step is not None:
        latest_allowed = request.to_step
    elif request.onset_step is None:
        latest_allowed = newest_step
    else:
        latest_allowed = onset_step - policy.rollback_margin_steps
    rejected: list[Rejection] = []
    checkpoint = checkpoints.choose(
        session, job_id=job_id, before_step=latest_allowed + 1, storage=storage, rejected=rejected
    )
    if checkpoint is None:
        refuted = "".join(f"; step {r.step} {r.reason}" for r in rejected)
        raise Conflict(
            f"job {job_id} has no verified checkpoint at or before step {max(latest_allowed, 0)}{refuted}"
        )
    new_number = current.number + 1
    for later in repo.list_checkpoints(session, job_id=job_id):
        if later.step > checkpoint.step and later.usable:
            checkpoints.mark_unusable(
                later, f"rolled back past: attempt {new_number} resumes from step {checkpoint.step}"
            )
    skip_end_step = (
        checkpoint.step + request.skip_steps
        if request.skip_steps is not None
        else onset_step + policy.skip_steps_after
    )
    in_force = current.skip_ranges
    skip_range = [batch_index(checkpoint.step, in_force), batch_index(skip_end_step, in_force)]
    skip_ranges = [list(r) for r in merge_ranges([*in_force, skip_range])]
    lr_scale = request.lr_scale if request.lr_scale is not None else current.lr_scale * policy.lr_scale_on_rollback
    why = request.why
    if rejected:
        why += "; passed over " + "; ".join(f"step {r.step} ({r.reason})" for r in rejected)
    attempt = attempts.open_attempt(
        session,
        job=job,
        reason=request.reason,
        actor=request.actor,
        why=why,
        resume_from=checkpoint,
        skip_ranges=skip_ranges,
        lr_scale=lr_scale,
    )
    lifecycle.move(
        session,
        job,
        lifecycle.ROLL_BACK,
        actor=request.actor,
        attempt=attempt.number,
        reason=why,
        data={
            "onset_step": onset_step,
            "rolled_back_attempt": request.expected_attempt if request.expected_attempt is not None else current.number,
            "superseded_attempt": current.number,
            "checkpoint": {"id": checkpoint.id, "step": checkpoint.step, "path": checkpoint.path},
            "passed_over": [r.as_event_data() for r in rejected],
            "skip_range_batches": skip_range,
            "lr_scale": lr_scale,
            "evidence": request.evidence or {},
        },
    )
    if commit:
        session.commit()
    return RollbackOutcome(job, attempt.number, checkpoint, skip_range, paused=False)


def _check_not_raced(job: Job, expected: int) -> None:
    """Conflict if a rollback already replaced attempt `expected` (or it never existed)."""
    current = job.attempts[-1]
    if expected > current.number:
        raise Conflict(f"job {job.id} has no attempt {expected}; it is at attempt {current.number}")
    winner = next(
        (a for a in job.attempts if a.number > expected and AttemptReason(a.reason).is_rollback), None
    )
    if winner is not None:
        raise Conflict(
            f"job {job.id} is already at attempt {current.number}, not {expected}: another rollback "
            f"won the race (attempt {winner.number}, {winner.reason})"
        )


def _recent_rollbacks(session: Session, job: Job, onset_step: int, policy: WatchdogSpec) -> int:
    """Rollbacks of this job whose anomaly lies within the window before this one's."""
    window = policy.rollback_window_steps
    onsets = [e.data.get("onset_step", 0) for e in repo.job_events(session, job_id=job.id, kind="job.rolled_back")]
    return sum(1 for onset in onsets if onset_step - onset <= window)


def _pause_for_a_person(
    session: Session, job: Job, request: RollbackRequest, onset_step: int, policy: WatchdogSpec, commit: bool
) -> RollbackOutcome:
    job.desired_state = DesiredState.PAUSED
    repo.add_event(
        session,
        kind="job.needs_attention",
        actor=request.actor,
        job_id=job.id,
        attempt=job.attempts[-1].number,
        reason=(
            f"{policy.max_rollbacks} rollbacks within {policy.rollback_window_steps} "
            f"steps already; paused instead of rolling back again ({request.why})"
        ),
        data={"onset_step": onset_step, "evidence": request.evidence or {}},
    )
    if commit:
        session.commit()
    return RollbackOutcome(job, None, None, None, paused=True)
