"""Stalls: a workload that runs but trains no more steps (a hung NCCL collective, a dead loader).

A hung collective writes nothing: no metric, no log line, no exit. Only the absence of steps
tells it, so the check lives where the running workload and its stream of steps meet: the
controller's reconcile, which looks at every running job every few seconds anyway, reads the
attempt's newest step from the database (`LatestMetric`, one row) and asks the backend how its
pods are. `reconcile.plan` decides (`Progress.stalled`), as it decides everything else; this
module only measures. The watchdog, by contrast, wakes only when a metric arrives: exactly what
a stall never sends.

The timeout is the spec's `watchdog.stall_timeout_s`, or else `STEP_TIME_MULTIPLE` × the job's
median step time, never below the service's floor nor below the pods' termination grace period
(a checkpoint save sends no steps for about that long). Before an attempt's first step it is at
least `stall_startup_s`: loading a checkpoint and building data indices are not stalls.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.controller.backends import TemporaryBackendError
from service.controller.reconcile import Progress, RecordStall
from service.db import repo
from service.db.models import Attempt, Job, LatestMetric, MetricPoint, utcnow

# The trainer reports it every step (trainer.train: throughput/step_time_s).
STEP_METRIC = "throughput/step_time_s"
# Ten steps without progress is far outside a healthy run's jitter (evaluation, a slow batch),
# and still minutes, not hours, for a hung collective on a large run.
STEP_TIME_MULTIPLE = 10.0
# The median of this many recent steps: a few slow ones (evaluation, a save) do not move it.
RECENT_STEPS = 64


def stall_timeout_s(
    *,
    spec_timeout_s: float | None,
    median_step_s: float | None,
    floor_s: float,
    grace_s: float,
    first_step: bool,
    startup_s: float,
) -> float:
    """The stall timeout: the spec's, or a multiple of the median step time bounded below; before
    the first step, at least the start-up allowance."""
    if spec_timeout_s is not None:
        timeout = spec_timeout_s
    else:
        timeout = max(floor_s, grace_s, STEP_TIME_MULTIPLE * (median_step_s or 0.0))
    return max(timeout, startup_s) if first_step else timeout


def median_step_s(session: Session, *, job_id: int) -> float | None:
    """The job's median step time over its most recent steps, any attempt; None before any."""
    query = (
        select(MetricPoint.value)
        .where(MetricPoint.job_id == job_id, MetricPoint.name == STEP_METRIC)
        .where(MetricPoint.value.is_not(None))
        .order_by(MetricPoint.step.desc())  # backwards along ix_metric_points_job_name_step
        .limit(RECENT_STEPS)
    )
    values = [v for v in session.scalars(query) if v is not None and v >= 0]
    return statistics.median(values) if values else None


def measure(
    session: Session,
    job: Job,
    attempt: Attempt,
    *,
    floor_s: float,
    startup_s: float,
    grace_s: float,
    now: datetime | None = None,
) -> Progress | None:
    """The running attempt's progress; None while it has not started running."""
    if attempt.started_at is None:
        return None
    now = now or utcnow()
    latest = session.get(LatestMetric, (job.id, STEP_METRIC))
    since, last_step = attempt.started_at, None
    if latest is not None and latest.attempt == attempt.number:
        last_step = latest.step
        since = max(since, latest.created_at)
    spec_timeout = job.watchdog.stall_timeout_s
    timeout = stall_timeout_s(
        spec_timeout_s=spec_timeout,
        median_step_s=median_step_s(session, job_id=job.id) if spec_timeout is None else None,
        floor_s=floor_s,
        grace_s=grace_s,
        first_step=last_step is None,
        startup_s=startup_s,
    )
    return Progress(last_step=last_step, idle_s=max(0.0, (now - since).total_seconds()), timeout_s=timeout)


def record(session: Session, job: Job, found: RecordStall, backend: Any, *, actor: str) -> None:
    """Say what stalled, with the pods' states as the backend sees them: event `job.stalled`,
    data {"last_step", "stalled_s", "timeout_s", "pods", "nccl_timeout"}."""
    pods: list[dict] = []
    reader = getattr(backend, "pod_states", None)  # a backend that cannot tell leaves it empty
    if reader is not None:
        try:
            pods = reader(job.id, found.attempt, kind=job.kind)
        except TemporaryBackendError as exc:  # the event matters more than its detail
            pods = [{"error": f"could not read the pods: {exc}"}]
    nccl = any(pod.get("nccl_timeout") for pod in pods)
    repo.add_event(
        session,
        kind="job.stalled",
        actor=actor,
        job_id=job.id,
        attempt=found.attempt,
        reason=found.why + ("; a pod names an NCCL timeout" if nccl else ""),
        data={
            "last_step": found.last_step,
            "stalled_s": round(found.stalled_s, 3),
            "timeout_s": round(found.timeout_s, 3),
            "pods": pods,
            "nccl_timeout": nccl,
        },
    )
