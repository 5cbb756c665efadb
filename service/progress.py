"""How far a pretraining job is: steps done of all stages, recent tokens/s, and when it will end.

Read from `latest_metrics` (one row per job and metric, kept by ingest), never the points, so the
job's API answer and a /metrics scrape can both afford it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import lifecycle
from service.db.models import Job, JobState, LatestMetric, utcnow

TOKENS_PER_S = "throughput/tokens_per_s"
STEP_TIME_S = "throughput/step_time_s"
PROGRESS_METRICS = (TOKENS_PER_S, STEP_TIME_S)


class JobProgress(BaseModel):
    steps_done: int = Field(description="Optimizer steps trained, by the newest report (falls back with a rollback).")
    total_steps: int = Field(description="Optimizer steps of all stages.")
    percent: float = Field(description="steps_done / total_steps, in percent.")
    tokens: int | None = Field(description="Tokens trained on at the newest report.")
    tokens_per_s: float | None = Field(description="Training throughput at the newest step (trainer-measured).")
    step_time_s: float | None = Field(description="Seconds the newest step took.")
    eta_s: float | None = Field(description="Seconds left at the newest step time; null when finished or unknown.")
    eta_at: datetime | None = Field(description="When the job should finish at that pace.")


def progress(job: Job, latest: dict[str, tuple[int, int, float | None, int | None]], *, now: datetime | None = None) -> JobProgress | None:
    """The job's progress from its latest metrics ({name: (attempt, step, value, tokens)});
    None for a job that trains nothing (tokenizer and data jobs)."""
    total = (job.derived or {}).get("total_train_iters")
    if not total:
        return None
    speed, step_time = latest.get(TOKENS_PER_S), latest.get(STEP_TIME_S)
    done = step_time[1] + 1 if step_time is not None else 0
    if job.state == JobState.SUCCEEDED:
        done = total
    done = min(done, total)
    seconds = step_time[2] if step_time is not None else None
    eta = None
    if not lifecycle.is_terminal(job.state) and seconds is not None:
        eta = (total - done) * seconds
    return JobProgress(
        steps_done=done,
        total_steps=total,
        percent=100.0 * done / total,
        tokens=step_time[3] if step_time is not None else None,
        tokens_per_s=speed[2] if speed is not None else None,
        step_time_s=seconds,
        eta_s=eta,
        eta_at=(now or utcnow()) + timedelta(seconds=eta) if eta is not None else None,
    )


def latest_rows(session: Session, job_ids: Iterable[int]) -> dict[int, dict[str, tuple[int, int, float | None, int | None]]]:
    """{job id: {metric: (attempt, step, value, tokens)}} of the progress metrics."""
    ids = list(job_ids)
    found: dict[int, dict[str, tuple[int, int, float | None, int | None]]] = {i: {} for i in ids}
    if not ids:
        return found
    query = select(
        LatestMetric.job_id, LatestMetric.name, LatestMetric.attempt, LatestMetric.step, LatestMetric.value, LatestMetric.tokens
    ).where(LatestMetric.job_id.in_(ids), LatestMetric.name.in_(PROGRESS_METRICS))
    for job_id, name, attempt, step, value, tokens in session.execute(query):
        found[job_id][name] = (attempt, step, value, tokens)
    return found
