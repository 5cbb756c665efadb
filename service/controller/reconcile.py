"""The controller's decision, as a pure function: desired state + observed state -> actions.

Level-triggered: nothing here remembers what happened; `plan` looks at the job as stored and
the workloads as the backend reports them, and says what to do to make them agree. Applying
the actions is idempotent, so running `plan` twice, or after a crash, is always safe.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from service.controller.outcome import Outcome, TrainerOutcome
from service.lifecycle import TERMINAL_ATTEMPT_STATES, TERMINAL_JOB_STATES

# How soon to look again while something is in motion, and while a job just runs.
REQUEUE_SOON_S = 2.0
REQUEUE_RUNNING_S = 5.0


class Phase(enum.StrEnum):
    """A workload's phase as the backend reports it."""

    PENDING = "pending"  # created, not yet running (scheduling, pulling images)
    QUEUED = "queued"  # held suspended by a queue (Kueue) until admitted; `reason` says why
    RUNNING = "running"
    RESTARTING = "restarting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Progress:
    """How far the running attempt got, and how long ago."""

    last_step: int | None  # None: it has not reported a step yet
    idle_s: float  # since its last step (or since it started running, before the first)
    timeout_s: float

    @property
    def stalled(self) -> bool:
        return self.idle_s >= self.timeout_s


@dataclass(frozen=True)
class WorkloadStatus:
    name: str
    attempt: int
    phase: Phase
    reason: str | None = None
    retryable: bool = False  # without an outcome: whether a new attempt may help
    outcome: TrainerOutcome | None = None  # how the trainer said it ended, once it has
    # Ended by the cluster taking the machines back (eviction, preemption, a drain), not by the
    # run: a new attempt from the newest checkpoint that no retry budget counts.
    preempted: bool = False


@dataclass(frozen=True)
class Desired:
    """What the database says about a job."""

    job_id: int
    state: str  # JobState value
    desired_state: str  # DesiredState value
    attempt: int  # the newest attempt's number
    attempt_state: str  # AttemptState value of the newest attempt
    pod_failure_retries: int  # attempts opened so far because pods failed
    max_pod_failure_retries: int
    # A job whose workload reports a result before it exits (tokenizer, data), none stored yet.
    awaits_result: bool = False
    queue_reason: str | None = None  # the stored state_reason of a queued job
    progress: Progress | None = None  # a running pretraining attempt's steps (stall.measure)
    stall_restarts: int = 0  # attempts opened so far because the run stalled
    max_stall_restarts: int = 0


@dataclass(frozen=True)
class Observed:
    """What the backend says: this job's workloads, by attempt."""

    workloads: dict[int, WorkloadStatus] = field(default_factory=dict)


# --- actions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateWorkload:
    attempt: int


@dataclass(frozen=True)
class DeleteWorkload:
    attempt: int
    why: str


@dataclass(frozen=True)
class RecordAttempt:
    """Set the newest attempt's state (and the job's, when it follows)."""

    attempt: int
    state: str
    reason: str | None = None
    outcome: TrainerOutcome | None = None


@dataclass(frozen=True)
class RecordQueued:
    """The newest attempt's workload waits for admission: the job is queued, for `reason`."""

    attempt: int
    reason: str | None


@dataclass(frozen=True)
class RecordStall:
    """The running attempt trained no step for its stall timeout: say so (event job.stalled)."""

    attempt: int
    last_step: int | None
    stalled_s: float
    timeout_s: float
    why: str


@dataclass(frozen=True)
class OpenAttempt:
    """Open attempt N+1 resuming from the newest good checkpoint."""

    reason: str  # AttemptReason value
    why: str


@dataclass(frozen=True)
class RollBack:
    """The trainer diverged: roll attempt `attempt` back, as a watchdog divergence would be."""

    attempt: int
    onset_step: int | None
    why: str


@dataclass(frozen=True)
class RefuseCheckpoint:
    """The trainer refused `path` as corrupt: mark it unusable and resume from an older one."""

    attempt: int
    path: str | None
    why: str


@dataclass(frozen=True)
class FinishJob:
    state: str  # succeeded | failed | cancelled | paused
    reason: str


Action = (
    CreateWorkload
    | DeleteWorkload
    | RecordAttempt
    | RecordQueued
    | RecordStall
    | OpenAttempt
    | RollBack
    | RefuseCheckpoint
    | FinishJob
)


def plan(desired: Desired, observed: Observed) -> tuple[list[Action], float | None]:
    """The actions that move the world towards `desired`, and when to look again (None: done)."""
    actions: list[Action] = []
    current = observed.workloads.get(desired.attempt)
    # Workloads of older attempts have no business running.
    for attempt in sorted(observed.workloads):
        if attempt != desired.attempt:
            actions.append(DeleteWorkload(attempt, why=f"attempt {attempt} is superseded"))

    if desired.state in TERMINAL_JOB_STATES:
        if desired.state == "cancelled" and current is not None:
            actions.append(DeleteWorkload(desired.attempt, why="the job is cancelled"))
        return actions, (REQUEUE_SOON_S if actions else None)

    if desired.desired_state in ("cancelled", "paused"):
        target = desired.desired_state
        if current is not None:
            actions.append(DeleteWorkload(desired.attempt, why=f"the job is {target}"))
            return actions, REQUEUE_SOON_S
        if desired.attempt_state not in TERMINAL_ATTEMPT_STATES:
            actions.append(RecordAttempt(desired.attempt, "cancelled", reason=f"job {target}"))
        if desired.state != target:
            actions.append(FinishJob(target, reason=f"{target} on request"))
        return actions, None

    # desired running
    if desired.state == "paused":
        # Resuming opens a new attempt (the API does that); until then nothing to do.
        return actions, (REQUEUE_SOON_S if actions else None)

    if current is None:
        if desired.attempt_state == "pending":
            actions.append(CreateWorkload(desired.attempt))
            return actions, REQUEUE_SOON_S
        if desired.attempt_state == "running":
            # It ran and vanished (node lost, deleted by hand): as good as a retryable failure.
            actions += _after_failure(desired, "its workload disappeared", retryable=True)
            return actions, REQUEUE_SOON_S
        return actions, (REQUEUE_SOON_S if actions else None)

    if current.phase == Phase.QUEUED:
        if desired.attempt_state == "running":
            # It ran, and the queue took its machines back (Kueue evicted and suspended it).
            reason = f"evicted by its queue: {current.reason or 'no reason given'}"
            actions.append(RecordAttempt(desired.attempt, "superseded", reason=reason))
            actions.append(OpenAttempt("preempted", why=f"attempt {desired.attempt}: {reason}"))
            return actions, REQUEUE_SOON_S
        if desired.state != "queued" or desired.queue_reason != current.reason:
            actions.append(RecordQueued(desired.attempt, current.reason))
        return actions, REQUEUE_RUNNING_S

    if current.phase in (Phase.PENDING, Phase.RUNNING, Phase.RESTARTING):
        progress = desired.progress
        if (
            current.phase == Phase.RUNNING
            and desired.attempt_state == "running"
            and progress is not None
            and progress.stalled
        ):
            actions += _after_stall(desired, progress)
            return actions, REQUEUE_SOON_S
        if current.phase != Phase.PENDING and desired.attempt_state != "running":
            actions.append(RecordAttempt(desired.attempt, "running", reason=current.reason))
        return actions, REQUEUE_RUNNING_S if current.phase == Phase.RUNNING else REQUEUE_SOON_S

    if current.phase == Phase.SUCCEEDED:
        if desired.awaits_result:
            # Its command exits 0 only once the API took the result: something else ran.
            reason = "the workload exited 0 without reporting its result"
            actions.append(RecordAttempt(desired.attempt, "failed", reason=reason))
            actions.append(FinishJob("failed", reason=f"attempt {desired.attempt}: {reason}"))
            return actions, None
        if desired.attempt_state != "succeeded":
            actions.append(RecordAttempt(desired.attempt, "succeeded", outcome=current.outcome))
        actions.append(
            FinishJob("succeeded", reason=f"attempt {desired.attempt} finished training")
        )
        return actions, None

    # failed
    if current.outcome is not None and current.outcome.outcome != Outcome.COMPLETED:
        actions += _after_trainer_outcome(desired, current.outcome)
    elif current.preempted:
        reason = current.reason or "preempted"
        actions.append(RecordAttempt(desired.attempt, "superseded", reason=reason, outcome=current.outcome))
        actions.append(OpenAttempt("preempted", why=f"attempt {desired.attempt}: {reason}"))
    else:
        actions += _after_failure(
            desired, current.reason or "the workload failed", current.retryable, current.outcome
        )
    return actions, REQUEUE_SOON_S


def _after_trainer_outcome(desired: Desired, outcome: TrainerOutcome) -> list[Action]:
    """The trainer said how it ended: that, not the exit code, decides what comes next.

    | outcome            | next                                                              |
    | ------------------ | ----------------------------------------------------------------- |
    | diverged           | a rollback from its first non-finite step (the watchdog's policy) |
    | corrupt_checkpoint | that checkpoint unusable; a new attempt from an older good one    |
    | preempted          | a new attempt from the newest checkpoint, not a pod failure: the  |
    |                    | attempt ends superseded, not failed                               |
    | bad_config         | the job fails: the same config fails again                        |
    | crashed            | the job fails, as any trainer error does                          |
    """
    number = desired.attempt
    why = f"attempt {number}: the trainer {outcome.describe()}"
    record = RecordAttempt(number, "failed", reason=f"the trainer {outcome.describe()}", outcome=outcome)
    match outcome.outcome:
        case Outcome.DIVERGED:
            return [record, RollBack(number, onset_step=outcome.step, why=why)]
        case Outcome.CORRUPT_CHECKPOINT:
            return [record, RefuseCheckpoint(number, path=outcome.checkpoint, why=why)]
        case Outcome.PREEMPTED:
            # Not a failure: the attempt is superseded by its continuation (outcome preempted).
            superseded = RecordAttempt(
                number, "superseded", reason=f"the trainer {outcome.describe()}", outcome=outcome
            )
            return [superseded, OpenAttempt("preempted", why=why)]
        case _:
            return [record, FinishJob("failed", reason=why)]


def _after_stall(desired: Desired, progress: Progress) -> list[Action]:
    """No step for the stall timeout: a new attempt from the newest checkpoint (no data skipped),
    until `max_stall_restarts` are spent; then the job fails."""
    number = desired.attempt
    last = "no step yet" if progress.last_step is None else f"last step {progress.last_step}"
    why = (
        f"attempt {number} stalled: no new step for {progress.idle_s:.0f}s "
        f"(stall timeout {progress.timeout_s:.0f}s; {last})"
    )
    actions: list[Action] = [
        RecordStall(number, progress.last_step, progress.idle_s, progress.timeout_s, why)
    ]
    if desired.stall_restarts < desired.max_stall_restarts:
        actions.append(OpenAttempt("stall", why=why))
        return actions
    spent = f"{why}; {desired.max_stall_restarts} stall restarts spent (watchdog.max_stall_restarts)"
    actions.append(DeleteWorkload(number, why="it stalled"))
    actions.append(RecordAttempt(number, "failed", reason=why))
    actions.append(FinishJob("failed", reason=spent))
    return actions


def _after_failure(
    desired: Desired, reason: str, retryable: bool, outcome: TrainerOutcome | None = None
) -> list[Action]:
    actions: list[Action] = [RecordAttempt(desired.attempt, "failed", reason=reason, outcome=outcome)]
    if retryable and desired.pod_failure_retries < desired.max_pod_failure_retries:
        actions.append(OpenAttempt("pod_failure", why=f"attempt {desired.attempt}: {reason}"))
    elif retryable:
        actions.append(
            FinishJob(
                "failed",
                reason=f"attempt {desired.attempt}: {reason}; retry budget of "
                f"{desired.max_pod_failure_retries} pod-failure attempts spent",
            )
        )
    else:
        actions.append(FinishJob("failed", reason=f"attempt {desired.attempt}: {reason}"))
    return actions
