"""Benchmark evaluations of a job's checkpoints: which steps are scored, and their rows.

`choose_steps` is the policy (`evaluation.checkpoints`) as a pure function of what the job has
saved. The controller (`controller/evaluations.py`) asks `schedule` for new rows, runs one
checkpoint's workload at a time and records how it ended here; the workload reports its scores
through `POST /v1/jobs/{id}/evaluations`, which `record_results` stores. Nothing here touches
the job's own state: an evaluation that fails is a failed row, never a failed job.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import lifecycle
from service.db import repo
from service.db.models import Checkpoint, Evaluation, EvaluationState, Job, utcnow
from service.errors import Conflict, NotFound
from service.spec import EvaluationCheckpointsSpec, JobSpec

# Rows in these states hold their checkpoint: it is not pruned until they end.
OPEN_STATES = (EvaluationState.PENDING, EvaluationState.RUNNING)
# What a runner's result carries per task, as stored (contract B's RESULT.json).
SCORE_FIELDS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "nll", "samples", "num_fewshot")


def choose_steps(
    policy: EvaluationCheckpointsSpec,
    *,
    interval_steps: int,
    stage_end_steps: Sequence[int],
    saved_steps: Iterable[int],
    finished: bool,
) -> list[int]:
    """The saved steps the policy scores, ascending.

    `every: N` takes the steps that are multiples of N × `interval_steps` (a rule of the step,
    not of a list that pruning shortens); `stage_ends` the newest checkpoint at or before each
    stage's last step, once the run is past it (the trainer saves at its interval, so the last
    step of a stage before the final may have none of its own); `final` the newest checkpoint
    once the job has finished.
    """
    saved = sorted(set(saved_steps))
    chosen: set[int] = set()
    if policy.every is not None:
        period = policy.every * interval_steps
        chosen.update(step for step in saved if step > 0 and step % period == 0)
    if policy.stage_ends:
        for end in stage_end_steps:
            reached = finished or (bool(saved) and saved[-1] >= end)
            at_or_before = [step for step in saved if 0 < step <= end]
            if reached and at_or_before:
                chosen.add(at_or_before[-1])
    if policy.final and finished and saved:
        chosen.add(saved[-1])
    return sorted(chosen)


def stage_end_steps(job: Job) -> list[int]:
    """The last step of each stage, counted from the start of the run."""
    derivation = job.derivation
    if derivation is None:
        return []
    return list(itertools.accumulate(stage.train_iters for stage in derivation.stages))


def wants_evaluation(job: Job) -> bool:
    """Whether the job is a pretraining job with benchmarks to score."""
    spec = job.spec
    return isinstance(spec, JobSpec) and bool(spec.evaluation.benchmarks)


def chosen_steps(session: Session, job: Job, *, finished: bool) -> list[int]:
    """The steps of `job` the policy scores, among every checkpoint it registered."""
    spec = job.pretrain_spec
    return choose_steps(
        spec.evaluation.checkpoints,
        interval_steps=spec.checkpoint.interval_steps,
        stage_end_steps=stage_end_steps(job),
        saved_steps=(c.step for c in repo.list_checkpoints(session, job_id=job.id)),
        finished=finished,
    )


def list_evaluations(session: Session, *, job_id: int) -> Sequence[Evaluation]:
    """The job's evaluation rows, by step, then task in the spec's order of creation."""
    query = select(Evaluation).where(Evaluation.job_id == job_id)
    return session.scalars(query.order_by(Evaluation.step, Evaluation.id)).all()


def schedule(session: Session, job: Job) -> list[Evaluation]:
    """Add pending rows for every chosen step that has none and whose checkpoint is still
    there; the rows added. The caller commits."""
    if not wants_evaluation(job):
        return []
    spec = job.pretrain_spec
    have = {row.step for row in list_evaluations(session, job_id=job.id)}
    usable = {c.step: c for c in repo.list_checkpoints(session, job_id=job.id) if c.usable}
    added = []
    for step in chosen_steps(session, job, finished=lifecycle.is_terminal(job.state)):
        checkpoint = usable.get(step)
        if step in have or checkpoint is None:
            continue
        for benchmark in spec.evaluation.benchmarks:
            row = Evaluation(
                job_id=job.id,
                step=step,
                task=benchmark.task,
                state=EvaluationState.PENDING,
                checkpoint_id=checkpoint.id,
                num_fewshot=benchmark.num_fewshot,
            )
            session.add(row)
            added.append(row)
    session.flush()
    return added


def held_checkpoint_ids(session: Session, job: Job) -> set[int]:
    """Checkpoints pruning must keep: those an evaluation waits for or runs on, and those the
    policy scores that have no rows yet (the controller has not looked since they came)."""
    ids = set(
        session.scalars(
            select(Evaluation.checkpoint_id).where(
                Evaluation.job_id == job.id,
                Evaluation.state.in_(OPEN_STATES),
                Evaluation.checkpoint_id.is_not(None),
            )
        )
    )
    if wants_evaluation(job):
        scored = {row.step for row in list_evaluations(session, job_id=job.id)}
        steps = set(chosen_steps(session, job, finished=False)) - scored
        ids |= {c.id for c in repo.list_checkpoints(session, job_id=job.id) if c.step in steps}
    return ids


def step_rows(session: Session, *, job_id: int, step: int) -> list[Evaluation]:
    return [row for row in list_evaluations(session, job_id=job_id) if row.step == step]


def checkpoint_of(session: Session, rows: Sequence[Evaluation]) -> Checkpoint | None:
    """The checkpoint a step's rows score (None once it is gone)."""
    ids = {row.checkpoint_id for row in rows if row.checkpoint_id is not None}
    return session.get(Checkpoint, ids.pop()) if len(ids) == 1 else None


def mark_running(rows: Sequence[Evaluation]) -> None:
    now = utcnow()
    for row in rows:
        row.state = EvaluationState.RUNNING
        row.started_at = row.started_at or now


def mark_failed(rows: Sequence[Evaluation], reason: str) -> None:
    """End the open rows of a step as failed with `reason`; rows already ended stay."""
    now = utcnow()
    for row in rows:
        if row.state in OPEN_STATES:
            row.state = EvaluationState.FAILED
            row.error = reason[:2000]
            row.finished_at = now


def record_results(
    session: Session, *, job_id: int, step: int, results: Sequence[dict[str, Any]], actor: str
) -> list[Evaluation]:
    """Store a runner's scores for one step (a retried report rewrites the same); its rows.

    Refused (409) when the step has no evaluation under way, or the report names a task the
    step was not asked for; a task asked for and missing from the report fails its row.
    """
    repo.get_job(session, job_id=job_id, for_update=True)
    rows = step_rows(session, job_id=job_id, step=step)
    if not rows:
        raise NotFound(f"job {job_id} has no evaluation of step {step}")
    if all(row.state == EvaluationState.FAILED for row in rows):
        raise Conflict(f"the evaluation of job {job_id} step {step} has already failed")
    by_task = {row.task: row for row in rows}
    unknown = sorted({result["task"] for result in results} - set(by_task))
    if unknown:
        raise Conflict(f"step {step} of job {job_id} was not asked to score {', '.join(unknown)}")
    now = utcnow()
    reported = {result["task"]: result for result in results}
    for task, row in by_task.items():
        if task not in reported:
            mark_failed([row], "the runner reported no result for this task")
            continue
        for field in SCORE_FIELDS:
            setattr(row, field, reported[task][field])
        row.state = EvaluationState.SUCCEEDED
        row.error = None
        row.finished_at = now
    repo.add_event(
        session,
        kind="evaluation.reported",
        actor=actor,
        job_id=job_id,
        data={"step": step, "tasks": sorted(reported)},
    )
    session.commit()
    return rows


def latest_scores(session: Session) -> list[Evaluation]:
    """Each job's and task's succeeded row of the highest step (for the /metrics scrape)."""
    query = (
        select(Evaluation)
        .where(Evaluation.state == EvaluationState.SUCCEEDED)
        .order_by(Evaluation.job_id, Evaluation.task, Evaluation.step)
    )
    latest: dict[tuple[int, str], Evaluation] = {}
    for row in session.scalars(query):
        latest[(row.job_id, row.task)] = row
    return list(latest.values())
