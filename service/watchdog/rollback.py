"""Rollback: back to the last good checkpoint, skip the bad data, resume as a new attempt.

One transaction does it all, under the job's row lock: choose the newest verified checkpoint
at least `rollback_margin_steps` before the anomaly's onset (or the step asked for), mark the
checkpoints after it unusable, and open attempt N+1 resuming from it with a data skip range
and an LR scale; the controller then replaces the workload. More than `max_rollbacks` within
`rollback_window_steps` pauses the job and says it needs a person, instead of looping.

Skip ranges live in the trainer's batch-index space (see `batch_index`): until a first skip,
batch index equals step; after one, steps are mapped through the ranges already in force.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service import attempts
from service.db import repo
from service.db.models import AttemptReason, Checkpoint, DesiredState, Job, JobState
from service.errors import Conflict
from service.spec import PRETRAIN_KIND


@dataclass(frozen=True)
class RollbackRequest:
    """What to roll back from: an anomaly's onset (watchdog) or a step chosen by on-call."""

    onset_step: int
    reason: AttemptReason  # rollback (watchdog) or oncall
    why: str
    actor: str
    expected_attempt: int | None = None  # the attempt the caller saw; another one means a race
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


def merge_ranges(ranges: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """Half-open ranges sorted, empty ones dropped, overlapping or adjacent ones merged."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted((int(a), int(b)) for a, b in ranges):
        if start == end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def batch_index(step: int, skip_ranges: Iterable[Sequence[int]] = ()) -> int:
    """The batch index training step `step` consumes: the trainer's rule (a test holds them equal)."""
    index = step
    for start, end in merge_ranges(skip_ranges):
        if start > index:
            break
        index += end - start
    return index


def roll_back(
    session: Session, *, job_id: int, request: RollbackRequest, commit: bool = True
) -> RollbackOutcome:
    """Apply a rollback in one transaction; Conflict when it cannot or another won the race.

    `commit=False` leaves it in the caller's transaction (the watchdog saves its state with it).
    """
    job = repo.get_job(session, job_id=job_id, for_update=True)
    current = job.attempts[-1]
    if job.kind != PRETRAIN_KIND:
        raise Conflict(
            f"job {job_id} is a {job.kind} job: it keeps no checkpoints and cannot be rolled back"
        )
    if JobState(job.state).is_terminal:
        raise Conflict(f"job {job_id} is already {job.state}")
    if request.expected_attempt is not None and current.number != request.expected_attempt:
        raise Conflict(
            f"job {job_id} is already at attempt {current.number}, not {request.expected_attempt}: "
            "another rollback or restart won the race"
        )
    policy = job.spec.get("watchdog", {})
    if _recent_rollbacks(session, job, request.onset_step, policy) >= policy.get("max_rollbacks", 3):
        return _pause_for_a_person(session, job, request, policy, commit)

    latest_allowed = request.to_step if request.to_step is not None else (
        request.onset_step - policy.get("rollback_margin_steps", 100)
    )
    checkpoint = repo.newest_good_checkpoint(session, job_id=job_id, before_step=latest_allowed + 1)
    if checkpoint is None:
        raise Conflict(f"job {job_id} has no verified checkpoint at or before step {max(latest_allowed, 0)}")
    for later in repo.list_checkpoints(session, job_id=job_id):
        if later.step > checkpoint.step and later.usable:
            later.usable = False
    skip_end_step = (
        checkpoint.step + request.skip_steps
        if request.skip_steps is not None
        else request.onset_step + policy.get("skip_steps_after", 200)
    )
    in_force = current.skip_ranges
    skip_range = [batch_index(checkpoint.step, in_force), batch_index(skip_end_step, in_force)]
    skip_ranges = [list(r) for r in merge_ranges([*in_force, skip_range])]
    lr_scale = request.lr_scale if request.lr_scale is not None else current.lr_scale * policy.get("lr_scale_on_rollback", 1.0)
    attempt = attempts.open_attempt(
        session,
        job=job,
        reason=request.reason,
        actor=request.actor,
        why=request.why,
        resume_from=checkpoint,
        skip_ranges=skip_ranges,
        lr_scale=lr_scale,
    )
    job.state = JobState.PENDING
    repo.add_event(
        session,
        kind="job.rolled_back",
        actor=request.actor,
        job_id=job.id,
        attempt=attempt.number,
        reason=request.why,
        data={
            "onset_step": request.onset_step,
            "checkpoint": {"id": checkpoint.id, "step": checkpoint.step, "path": checkpoint.path},
            "skip_range_batches": skip_range,
            "lr_scale": lr_scale,
            "evidence": request.evidence or {},
        },
    )
    if commit:
        session.commit()
    return RollbackOutcome(job, attempt.number, checkpoint, skip_range, paused=False)


def _recent_rollbacks(session: Session, job: Job, onset_step: int, policy: dict) -> int:
    """Rollbacks of this job whose anomaly lies within the window before this one's."""
    window = policy.get("rollback_window_steps", 2000)
    onsets = [e.data.get("onset_step", 0) for e in repo.job_events(session, job_id=job.id, kind="job.rolled_back")]
    return sum(1 for onset in onsets if onset_step - onset <= window)


def _pause_for_a_person(
    session: Session, job: Job, request: RollbackRequest, policy: dict, commit: bool
) -> RollbackOutcome:
    job.desired_state = DesiredState.PAUSED
    repo.add_event(
        session,
        kind="job.needs_attention",
        actor=request.actor,
        job_id=job.id,
        attempt=job.attempts[-1].number,
        reason=(
            f"{policy.get('max_rollbacks', 3)} rollbacks within {policy.get('rollback_window_steps', 2000)} "
            f"steps already; paused instead of rolling back again ({request.why})"
        ),
        data={"onset_step": request.onset_step, "evidence": request.evidence or {}},
    )
    if commit:
        session.commit()
    return RollbackOutcome(job, None, None, None, paused=True)
