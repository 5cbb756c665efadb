"""Goodput: where a job's wall time went, from its attempts, events, step times and checkpoints.

The wall time, from submission to the end (or to now while the job is active), is laid out as
a timeline of labelled intervals; every instant goes to exactly one category, the highest in
`CATEGORIES` order among the intervals covering it, so the categories add up to the wall time
by construction:

- `checkpoint`: saving (`checkpoint/save_s`, ending when the service registered the checkpoint)
  and loading (`checkpoint/load_s`, just before the attempt's first step);
- `productive`: an attempt's training, from the start of its first step to the end of its last
  step whose work survives into the final model;
- `lost`: training whose work was thrown away: after a rollback, the steps past the checkpoint
  the next attempt resumed from; after a pod failure, preemption or stall, the steps past the
  last checkpoint (the next attempt resumes from it);
- `stalled`: from the last step of an attempt to the `job.stalled` verdict on it;
- `queued`: from `attempt.queued` until the attempt runs (`attempt.running`) or ends;
- `startup`: from an attempt's opening to its first step (scheduling, image pull, process
  start), less what the categories above took;
- `other`: the rest (evaluation between steps is inside training; teardown after the last
  step, failure detection, a paused job's wait).

Training between steps (reporting, evaluation) is counted with the steps around it: the
surviving part of an attempt is one interval, not a sum of step times. Step times come from the
trainer's `time/step_end_s` (wall clock at a step's end) and `throughput/step_time_s`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import lifecycle
from service.db.models import Checkpoint, Event, Job, MetricPoint, utcnow

# Highest first: an instant covered by several intervals goes to the first of them.
CATEGORIES = ("checkpoint", "productive", "lost", "stalled", "queued", "startup", "other")
STEP_END = "time/step_end_s"
STEP_TIME = "throughput/step_time_s"
SAVE_S = "checkpoint/save_s"
LOAD_S = "checkpoint/load_s"
# Events the timeline reads.
QUEUED_EVENT, RUNNING_EVENT, STALLED_EVENT = "attempt.queued", "attempt.running", "job.stalled"


@dataclass(frozen=True)
class StepTime:
    """One trained step: its index and when it ended; it began `duration_s` earlier."""

    step: int
    ended_at: datetime
    duration_s: float

    @property
    def started_at(self) -> float:
        return self.ended_at.timestamp() - self.duration_s


@dataclass(frozen=True)
class AttemptTimes:
    """What the timeline needs of one attempt. `steps` may hold only some of its steps, in
    order: the first, the last and the last one kept (`kept_limits`) are the ones read."""

    number: int
    opened_at: datetime
    ended_at: datetime | None
    resume_step: int | None  # the step of the checkpoint it resumed from; None: from scratch
    steps: Sequence[StepTime] = ()
    load_s: float | None = None


@dataclass(frozen=True)
class SaveTime:
    """One checkpoint save: which attempt and step, when it ended, how long it took."""

    attempt: int
    step: int
    ended_at: datetime
    seconds: float


@dataclass(frozen=True)
class EventTime:
    kind: str
    attempt: int | None
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Goodput:
    started_at: datetime
    ended_at: datetime
    seconds: dict[str, float]
    lost_steps: int

    @property
    def wall_s(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def fractions(self) -> dict[str, float]:
        wall = self.wall_s
        return {name: (value / wall if wall > 0 else 0.0) for name, value in self.seconds.items()}

    @property
    def ratio(self) -> float:
        """Goodput proper: the share of the wall time that went into the final model."""
        return self.fractions["productive"]


def kept_limits(attempts: Sequence[AttemptTimes]) -> dict[int, int | None]:
    """Per attempt, the first step whose work was thrown away (None: all of it was kept).

    Attempt i keeps its steps below the step the next attempt resumed from (0 when it started
    afresh), and below whatever the attempts after that kept of earlier steps: a later
    rollback to an older checkpoint throws away more.
    """
    limits: dict[int, int | None] = {}
    limit: int | None = None
    ordered = sorted(attempts, key=lambda a: a.number)
    for current, following in zip(ordered[::-1], [None, *ordered[::-1]], strict=False):
        if following is not None:
            resumed = following.resume_step or 0
            limit = resumed if limit is None else min(limit, resumed)
        limits[current.number] = limit
    return limits


def goodput(
    *,
    submitted_at: datetime,
    finished_at: datetime | None,
    now: datetime,
    attempts: Sequence[AttemptTimes],
    saves: Iterable[SaveTime] = (),
    events: Iterable[EventTime] = (),
) -> Goodput:
    """Split the wall time from `submitted_at` to `finished_at` (or `now`) into `CATEGORIES`."""
    end = finished_at or now
    start_s, end_s = submitted_at.timestamp(), max(end.timestamp(), submitted_at.timestamp())
    intervals: list[tuple[float, float, str]] = []
    limits = kept_limits(attempts)
    lost_steps = 0
    ordered = sorted(attempts, key=lambda a: a.number)
    events = sorted(events, key=lambda e: e.at)
    for index, attempt in enumerate(ordered):
        opened = attempt.opened_at.timestamp()
        following = ordered[index + 1].opened_at.timestamp() if index + 1 < len(ordered) else None
        closed = _first(attempt.ended_at and attempt.ended_at.timestamp(), following, end_s)
        steps = sorted(attempt.steps, key=lambda s: s.step)
        first_start = steps[0].started_at if steps else None
        intervals.append((opened, first_start if first_start is not None else closed, "startup"))
        if attempt.load_s:
            anchor = first_start if first_start is not None else closed
            intervals.append((anchor - attempt.load_s, anchor, "checkpoint"))
        if steps:
            last_end = steps[-1].ended_at.timestamp()
            limit = limits[attempt.number]
            kept = [s for s in steps if limit is None or s.step < limit]
            kept_end = kept[-1].ended_at.timestamp() if kept else first_start
            intervals.append((first_start, kept_end, "productive"))
            intervals.append((kept_end, last_end, "lost"))
            if limit is not None:
                lost_steps += max(0, steps[-1].step + 1 - max(limit, steps[0].step))
        intervals.extend(_queued(attempt.number, events, closed))
        for event in events:
            if event.kind == STALLED_EVENT and _of_attempt(event, attempt.number, opened, closed):
                since = steps[-1].ended_at.timestamp() if steps else None
                if since is None or since > event.at.timestamp():
                    since = event.at.timestamp() - float(event.data.get("stalled_s") or 0.0)
                intervals.append((since, event.at.timestamp(), "stalled"))
    for save in saves:
        intervals.append((save.ended_at.timestamp() - save.seconds, save.ended_at.timestamp(), "checkpoint"))
    seconds = _attribute(intervals, start_s, end_s)
    return Goodput(submitted_at, end if end >= submitted_at else submitted_at, seconds, lost_steps)


def _first(*candidates: float | None) -> float:
    return next(c for c in candidates if c is not None)


def _of_attempt(event: EventTime, number: int, opened: float, closed: float) -> bool:
    if event.attempt is not None:
        return event.attempt == number
    return opened <= event.at.timestamp() <= closed


def _queued(number: int, events: list[EventTime], closed: float) -> list[tuple[float, float, str]]:
    """Each wait of the attempt in a queue: from attempt.queued to its next attempt.running."""
    waits, since = [], None
    for event in events:
        if event.attempt != number:
            continue
        if event.kind == QUEUED_EVENT and since is None:
            since = event.at.timestamp()
        elif event.kind == RUNNING_EVENT and since is not None:
            waits.append((since, event.at.timestamp(), "queued"))
            since = None
    if since is not None:
        waits.append((since, closed, "queued"))
    return waits


def _attribute(intervals: list[tuple[float, float, str]], start: float, end: float) -> dict[str, float]:
    """Sweep the clipped intervals: each elementary segment goes to its highest category, or
    `other` where nothing covers it. The segments tile [start, end], so the sum is end - start."""
    rank = {name: index for index, name in enumerate(CATEGORIES)}
    edges: list[tuple[float, int, int]] = []  # (time, +1 opens / -1 closes, category rank)
    for low, high, name in intervals:
        low, high = max(low, start), min(high, end)
        if high > low and math.isfinite(low) and math.isfinite(high):
            edges += [(low, 1, rank[name]), (high, -1, rank[name])]
    edges.sort()
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    open_counts = [0] * len(CATEGORIES)
    at = start
    for time, change, category in edges:
        if time > at:
            covering = next((i for i, count in enumerate(open_counts) if count > 0), rank["other"])
            seconds[CATEGORIES[covering]] += time - at
            at = time
        open_counts[category] += change
    seconds["other"] += end - at
    return seconds


# --- the loader -------------------------------------------------------------------------------------


def job_goodput(session: Session, job: Job, *, now: datetime | None = None) -> Goodput:
    """The job's goodput from what is stored: a few index lookups per attempt and checkpoint,
    never all of its metric points."""
    checkpoints = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id)))
    by_id = {c.id: c for c in checkpoints}
    shells = [
        AttemptTimes(
            number=a.number,
            opened_at=a.created_at,
            ended_at=a.finished_at,
            resume_step=by_id[a.resume_from_checkpoint_id].step if a.resume_from_checkpoint_id in by_id else None,
        )
        for a in job.attempts
    ]
    limits = kept_limits(shells)
    sparse = dict(_checkpoint_times(session, job.id))
    attempts = []
    for shell in shells:
        steps = _boundary_steps(session, job.id, shell.number, limits[shell.number])
        attempts.append(
            AttemptTimes(
                shell.number, shell.opened_at, shell.ended_at, shell.resume_step, steps,
                load_s=sum(v for (a, _, name), (v, _) in sparse.items() if a == shell.number and name == LOAD_S),
            )  # fmt: skip
        )
    registered = {(c.attempt, c.step): c.created_at for c in checkpoints}
    saves = [
        SaveTime(a, step, registered.get((a, step), reported_at), value)
        for (a, step, name), (value, reported_at) in sparse.items()
        if name == SAVE_S
    ]
    events = [
        EventTime(kind, attempt, at, data or {})
        for kind, attempt, at, data in session.execute(
            select(Event.kind, Event.attempt, Event.created_at, Event.data).where(
                Event.job_id == job.id, Event.kind.in_([QUEUED_EVENT, RUNNING_EVENT, STALLED_EVENT])
            )
        )
    ]
    finished = job.finished_at if lifecycle.is_terminal(job.state) else None
    return goodput(
        submitted_at=job.created_at, finished_at=finished, now=now or utcnow(),
        attempts=attempts, saves=saves, events=events,
    )  # fmt: skip


def _checkpoint_times(session: Session, job_id: int):
    """((attempt, step, name), (seconds, when reported)) of every save and load timing."""
    query = select(MetricPoint.attempt, MetricPoint.step, MetricPoint.name, MetricPoint.value, MetricPoint.created_at).where(
        MetricPoint.job_id == job_id, MetricPoint.name.in_([SAVE_S, LOAD_S])
    )
    for attempt, step, name, value, created_at in session.execute(query):
        if value is not None:
            yield (attempt, step, name), (value, created_at)


def _boundary_steps(session: Session, job_id: int, attempt: int, limit: int | None) -> list[StepTime]:
    """The attempt's first and last step, and its last step below `limit`: what `goodput` reads."""
    base = select(MetricPoint.step).where(
        MetricPoint.job_id == job_id, MetricPoint.attempt == attempt, MetricPoint.name == STEP_END
    )
    # Ordered as the (job, attempt, step, name) unique index is: each lookup is one index seek,
    # however many points the job has.
    first, last = (MetricPoint.attempt, MetricPoint.step), (MetricPoint.attempt.desc(), MetricPoint.step.desc())
    wanted = {session.scalar(base.order_by(*first).limit(1)), session.scalar(base.order_by(*last).limit(1))}
    if limit is not None:
        wanted.add(session.scalar(base.where(MetricPoint.step < limit).order_by(*last).limit(1)))
    wanted.discard(None)
    if not wanted:
        return []
    rows = session.execute(
        select(MetricPoint.step, MetricPoint.name, MetricPoint.value).where(
            MetricPoint.job_id == job_id,
            MetricPoint.attempt == attempt,
            MetricPoint.step.in_(sorted(wanted)),
            MetricPoint.name.in_([STEP_END, STEP_TIME]),
        )
    )
    found: dict[int, dict[str, float | None]] = {}
    for step, name, value in rows:
        found.setdefault(step, {})[name] = value
    steps = []
    for step in sorted(found):
        ended, duration = found[step].get(STEP_END), found[step].get(STEP_TIME)
        if ended is not None:
            steps.append(StepTime(step, datetime.fromtimestamp(ended, tz=utcnow().tzinfo), duration or 0.0))
    return steps
