"""Runs from this install's finished jobs, for a fit over them (`{"jobs": "finished"}`).

Per succeeded pretraining job:
- params: the planner's N of its 6ND figure (`plan.compute.n_params_6nd`, the active parameters),
  from the plan admission stored;
- loss: its newest held-out loss, `eval/loss` in `latest_metrics` (the trainer's eval phase);
- tokens: the tokens trained when that loss was measured (the eval record's own `tokens`);
- flops: 6·params·tokens, the planner's 6ND for those tokens.
nll and accuracy are null: the benchmark evaluations table (issue 19's service side) is not
on this branch; once it is, they are the job's newest evaluation of the chosen task.
"""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Job, JobState, LatestMetric
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


def runs_from_finished_jobs(session: Session) -> CollectedRuns:
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
    return collected
