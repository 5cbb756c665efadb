"""The job lifecycle: which states a job and its attempts may move between, and what each move writes.

Every change of `Job.state` and `Attempt.state` goes through `move` and `move_attempt`: they check
the move against the tables below, set the state with what goes with it (why, when it started or
finished; a finished job's or attempt's ingest tokens revoked) and write its event, all in the
caller's transaction. A move the tables do not allow raises `IllegalTransition` before anything
changes. `docs/job-lifecycle.md` draws these tables (`scripts/lifecycle_diagram.py`).

A job moves by named transitions, because the same pair of states can be reached for different
reasons that tell different stories (a paused job goes back to pending by `resume` or by
`roll_back`). An attempt only ever runs and then ends one way, so its moves are (from, to) pairs
and each writes `attempt.<state>`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from service import tokens
from service.db import repo
from service.db.models import Attempt, AttemptState, Job, JobState, utcnow
from service.errors import Conflict

# --- jobs -------------------------------------------------------------------------------------------

TERMINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
# A tuple of values, as SQL `IN (...)` clauses want it, in the enum's order.
ACTIVE_JOB_STATES = tuple(s.value for s in JobState if s not in TERMINAL_JOB_STATES)
# Where a job stays until someone acts; `state_reason` says why it is there, and only there.
RESTING_JOB_STATES = TERMINAL_JOB_STATES | {JobState.PAUSED}
# Where `state_reason` says why a job is there: where it rests, and where it waits in a queue
# (the queue's own words: Kueue's reason for not admitting it yet).
REASONED_JOB_STATES = RESTING_JOB_STATES | {JobState.QUEUED}

_ACTIVE = frozenset(JobState(s) for s in ACTIVE_JOB_STATES)
_STARTED = frozenset({JobState.PENDING, JobState.QUEUED, JobState.RUNNING})


@dataclass(frozen=True)
class Transition:
    """One way a job changes state: from which states, to which, and the job event it writes."""

    name: str
    sources: frozenset[JobState]
    target: JobState
    # None where the attempt's event, written in the same transaction, tells the story.
    event: str | None
    when: str  # for the docs

    def allows(self, state: str) -> bool:
        return state in self.sources


QUEUE = Transition(
    "queue",
    sources=frozenset({JobState.PENDING}),
    target=JobState.QUEUED,
    event="attempt.queued",
    when="its attempt's workload waits for admission (Kueue); state_reason is the queue's reason",
)
START = Transition(
    "start",
    sources=frozenset({JobState.PENDING, JobState.QUEUED}),
    target=JobState.RUNNING,
    event=None,
    when="its attempt's workload runs (attempt.running tells it)",
)
RETRY = Transition(
    "retry",
    sources=_STARTED,
    target=JobState.PENDING,
    event=None,
    when="a new attempt after a pod failure, a preemption, a stall or a refused checkpoint "
    "(attempt.opened tells it)",
)
ROLL_BACK = Transition(
    "roll_back",
    sources=_ACTIVE,
    target=JobState.PENDING,
    event="job.rolled_back",
    when="a new attempt from an earlier checkpoint, skipping data (watchdog, trainer or on-call)",
)
RESUME = Transition(
    "resume",
    sources=frozenset({JobState.PAUSED}),
    target=JobState.PENDING,
    event="job.resumed",
    when="a new attempt from the newest good checkpoint, on request",
)
PAUSE = Transition(
    "pause",
    sources=_STARTED,
    target=JobState.PAUSED,
    event="job.paused",
    when="the controller stopped its workload because pausing was asked for",
)
REQUEST_CANCEL = Transition(
    "request_cancel",
    sources=frozenset({JobState.PENDING, JobState.QUEUED, JobState.RUNNING, JobState.PAUSED}),
    target=JobState.CANCELLING,
    event="job.cancel_requested",
    when="cancelling was asked for while a workload may still run",
)
CANCEL = Transition(
    "cancel",
    sources=_ACTIVE,
    target=JobState.CANCELLED,
    event="job.cancelled",
    when="nothing runs any more (at once when nothing had started)",
)
SUCCEED = Transition(
    "succeed",
    sources=_STARTED,
    target=JobState.SUCCEEDED,
    event="job.succeeded",
    when="its attempt finished training (or its tokenizer run)",
)
FAIL = Transition(
    "fail",
    sources=_ACTIVE,
    target=JobState.FAILED,
    event="job.failed",
    when="its attempt cannot go on (or the backend refused its workload) and nothing is left to retry",
)

JOB_TRANSITIONS: tuple[Transition, ...] = (
    QUEUE, START, RETRY, ROLL_BACK, RESUME, PAUSE, REQUEST_CANCEL, CANCEL, SUCCEED, FAIL
)
# A job is created pending (`repo.add_job`); that is not a move, and job.submitted says it.
INITIAL_JOB_STATE = JobState.PENDING
# The transition the controller's `FinishJob(state)` action names by its target state.
SETTLING = {t.target: t for t in (PAUSE, CANCEL, SUCCEED, FAIL)}


def is_terminal(state: str) -> bool:
    """Whether a job in `state` is done for good."""
    return state in TERMINAL_JOB_STATES


# --- attempts ---------------------------------------------------------------------------------------

TERMINAL_ATTEMPT_STATES = frozenset(
    {AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.CANCELLED, AttemptState.SUPERSEDED}
)
# From each state, where an attempt may go; every move writes `attempt.<target>` unless the
# caller's own event tells it (a superseded attempt: attempt.opened; a cancelled one: job.cancelled).
ATTEMPT_TRANSITIONS: dict[AttemptState, frozenset[AttemptState]] = {
    AttemptState.PENDING: frozenset({AttemptState.RUNNING}) | TERMINAL_ATTEMPT_STATES,
    AttemptState.RUNNING: TERMINAL_ATTEMPT_STATES,
    **{state: frozenset() for state in TERMINAL_ATTEMPT_STATES},
}


class IllegalTransition(Conflict):
    """A move the lifecycle does not allow; nothing was changed."""


def job_edges() -> Iterable[tuple[JobState, JobState, Transition]]:
    """Every (from, to, transition) the job table allows, in the enum's order."""
    for transition in JOB_TRANSITIONS:
        for source in JobState:
            if source in transition.sources:
                yield source, transition.target, transition


# --- moving ----------------------------------------------------------------------------------------


def move(
    session: Session,
    job: Job,
    transition: Transition,
    *,
    actor: str,
    reason: str | None = None,
    attempt: int | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Move `job` by `transition` and write its event (with `attempt`, `reason`, `data`).

    `reason` becomes the job's `state_reason` where it rests (paused, finished) and is cleared
    elsewhere. Finishing revokes the job's ingest tokens. The caller commits.
    """
    if not transition.allows(job.state):
        raise IllegalTransition(f"job {job.id} cannot {transition.name.replace('_', ' ')}: it is {job.state}")
    target = transition.target
    job.state = target
    job.state_reason = reason if target in REASONED_JOB_STATES else None
    if target in TERMINAL_JOB_STATES:
        job.finished_at = utcnow()
        tokens.revoke_attempt_tokens(
            session, job_id=job.id, attempt=None, actor=actor, reason=f"job {job.id} {target}"
        )
    if transition.event is not None:
        repo.add_event(
            session,
            kind=transition.event,
            actor=actor,
            job_id=job.id,
            attempt=attempt,
            reason=reason,
            data=data,
        )


def note_queue_reason(job: Job, reason: str | None) -> None:
    """A queued job's queue gave a new reason (Kueue's message changed): keep the newest, with
    no event (`attempt.queued` told the wait once)."""
    if job.state != JobState.QUEUED:
        raise IllegalTransition(f"job {job.id} is {job.state}, not queued")
    job.state_reason = reason


def move_attempt(
    session: Session,
    job: Job,
    attempt: Attempt,
    to: AttemptState,
    *,
    actor: str,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
    event: bool = True,
) -> None:
    """Move `attempt` of `job` to `to`, with why; `attempt.<to>` unless `event` is False.

    Ending an attempt revokes its ingest tokens: a token lives exactly as long as its attempt.
    The caller commits.
    """
    if to not in ATTEMPT_TRANSITIONS[AttemptState(attempt.state)]:
        raise IllegalTransition(
            f"attempt {attempt.number} of job {job.id} cannot become {to}: it is {attempt.state}"
        )
    attempt.state = to
    attempt.state_reason = reason
    if to == AttemptState.RUNNING:
        attempt.started_at = attempt.started_at or utcnow()
    else:
        attempt.finished_at = utcnow()
    if event:
        repo.add_event(
            session,
            kind=f"attempt.{to}",
            actor=actor,
            job_id=job.id,
            attempt=attempt.number,
            reason=reason,
            data=data,
        )
    if to in TERMINAL_ATTEMPT_STATES:
        tokens.revoke_attempt_tokens(
            session,
            job_id=job.id,
            attempt=attempt.number,
            actor=actor,
            reason=f"attempt {attempt.number} {to}",
        )
