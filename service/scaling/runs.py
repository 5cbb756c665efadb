"""Runs from this install's finished jobs, for a fit over them (`{"jobs": "finished"}`).

Per succeeded pretraining job:
- params: the planner's N of its 6ND figure (`plan.compute.n_params_6nd`, the active parameters),
  from the plan admission stored;
- loss: its newest held-out loss, `eval/loss` in `latest_metrics` (the trainer's eval phase);
- tokens: the tokens trained when that loss was measured (the eval record's own `tokens`);
- flops: 6·params·tokens, the planner's 6ND for those tokens;
- nll, accuracy: the job's newest scored checkpoint on one benchmark task (`evaluations`): the
  mean NLL of the correct option, and `acc_norm`, lm-eval's choice of the option with the lowest
  NLL per byte (the lowest-perplexity option, as Llama 3 scored ARC-Challenge). The task is the
  one asked for, else the only one the jobs were scored on. The two-step predictor needs them on
  every run or on none: when some job has no score for the task, none carries it, and a warning
  names the jobs.
"""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Evaluation, EvaluationState, Job, JobState, LatestMetric
from service.scaling.models import Run

HELD_OUT_LOSS = "eval/loss"


class SkippedJob(BaseModel):
    job_id: int
    reason: str


class CollectedRuns(BaseModel):
    """The runs read from finished jobs, the jobs left out and why, and what to know of the rest."""

    runs: list[Run]
    skipped: list[SkippedJob]
    warnings: list[str]


def runs_from_finished_jobs(session: Session, *, task: str | None = None) -> CollectedRuns:
    """One run per succeeded pretraining job that reported a held-out loss."""
    jobs = session.scalars(
        select(Job).where(Job.state == JobState.SUCCEEDED, Job.kind == "pretrain").order_by(Job.id)
    ).all()
    losses = {
        row.job_id: row
        for row in session.scalars(
            select(LatestMetric).where(
                LatestMetric.name == HELD_OUT_LOSS, LatestMetric.job_id.in_([j.id for j in jobs])
            )
        )
    }
    collected = CollectedRuns(runs=[], skipped=[], warnings=[])
    for job in jobs:
        plan, row = job.memory_plan, losses.get(job.id)
        if plan is None:
            collected.skipped.append(SkippedJob(job_id=job.id, reason="it has no stored plan"))
            continue
        if row is None or row.value is None:
            collected.skipped.append(
                SkippedJob(
                    job_id=job.id,
                    reason=f"it reported no finite held-out loss ({HELD_OUT_LOSS}; set eval.interval_steps)",
                )
            )
            continue
        params = plan.compute.n_params_6nd
        tokens = row.tokens or plan.compute.tokens
        total_steps = (job.derived or {}).get("total_train_iters")
        if total_steps and row.step < total_steps - 1:
            collected.warnings.append(
                f"job {job.id}: its newest held-out loss is from step {row.step} of {total_steps} "
                "(eval.interval_steps does not divide the run), before its schedule ended"
            )
        collected.runs.append(
            Run(
                params=params,
                tokens=tokens,
                flops=6 * params * tokens,
                loss=row.value,
                job_id=job.id,
            )
        )
    _add_benchmark(session, collected, task=task)
    return collected


def _add_benchmark(session: Session, collected: CollectedRuns, *, task: str | None) -> None:
    """Each run's newest succeeded score on `task` (or the jobs' only task), on all runs or none."""
    job_ids = [run.job_id for run in collected.runs]
    scores: dict[int, dict[str, Evaluation]] = {}
    for row in session.scalars(
        select(Evaluation)
        .where(Evaluation.job_id.in_(job_ids), Evaluation.state == EvaluationState.SUCCEEDED)
        .order_by(Evaluation.step)
    ):
        if row.nll is not None and row.acc_norm is not None:
            scores.setdefault(row.job_id, {})[row.task] = row  # ascending: the newest step wins
    tasks = {name for by_task in scores.values() for name in by_task}
    if task is None:
        if len(tasks) > 1:
            collected.warnings.append(
                f"the jobs were scored on several benchmarks ({', '.join(sorted(tasks))}): "
                "name one (task) for the benchmark predictor"
            )
        if len(tasks) != 1:
            return
        (task,) = tasks
    missing = [run.job_id for run in collected.runs if task not in scores.get(run.job_id, {})]
    if missing:
        if len(missing) < len(collected.runs):
            collected.warnings.append(
                f"no benchmark predictor: jobs {', '.join(map(str, missing))} have no score on {task!r}"
            )
        return
    for index, run in enumerate(collected.runs):
        score = scores[run.job_id][task]
        collected.runs[index] = run.model_copy(update={"nll": score.nll, "accuracy": score.acc_norm})
