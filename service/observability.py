"""Prometheus: what the dashboards and alerts read, computed from the database at scrape time.

Per-job series cover live jobs only (pending, running, paused, cancelling), so label
cardinality stays bounded: a finished job leaves the exporter.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import ACTIVE_JOB_STATES, Attempt, Event, Job, JobState, MetricPoint, utcnow

# Latest values exported per live job: the channel losses, eval PPL and throughput.
EXPORTED_PREFIXES = ("loss", "eval/ppl/", "throughput/", "grad_norm", "lr")


class ServiceCollector:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator:
        with self.sessions() as session:
            yield from self._jobs(session)
            yield from self._latest(session)
            yield from self._verdicts(session)
            yield from self._rollbacks(session)
            yield from self._ingest_lag(session)

    def _jobs(self, session: Session):
        jobs = GaugeMetricFamily("pretrain_jobs", "Jobs by state.", labels=["state"])
        counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs
        attempts = GaugeMetricFamily("pretrain_attempts", "Attempts by why they were opened.", labels=["reason"])
        for reason, count in session.execute(select(Attempt.reason, func.count()).group_by(Attempt.reason)):
            attempts.add_metric([reason], count)
        yield attempts

    def _latest(self, session: Session):
        loss = GaugeMetricFamily("pretrain_loss", "Latest training loss of a live job.", labels=["job", "name", "channel"])
        ppl = GaugeMetricFamily("pretrain_eval_ppl", "Latest eval perplexity of a live job.", labels=["job", "name", "channel"])
        other = GaugeMetricFamily("pretrain_train_metric", "Latest throughput/optimizer metric of a live job.", labels=["job", "name", "metric"])
        step = GaugeMetricFamily("pretrain_step", "Latest step a live job reported.", labels=["job", "name"])
        newest = (
            select(MetricPoint.job_id, MetricPoint.name, func.max(MetricPoint.id).label("id"))
            .join(Job, Job.id == MetricPoint.job_id)
            .where(Job.state.in_(ACTIVE_JOB_STATES))
            .group_by(MetricPoint.job_id, MetricPoint.name)
            .subquery()
        )
        rows = session.execute(
            select(Job.id, Job.name, MetricPoint.name, MetricPoint.value, MetricPoint.step)
            .join(newest, MetricPoint.id == newest.c.id)
            .join(Job, Job.id == MetricPoint.job_id)
        )
        steps: dict[tuple[str, str], int] = {}
        for job_id, job_name, metric, value, at in rows:
            job = str(job_id)
            steps[(job, job_name)] = max(steps.get((job, job_name), 0), at)
            if value is None or not metric.startswith(EXPORTED_PREFIXES):
                continue
            if metric == "loss" or metric.startswith("loss/"):
                loss.add_metric([job, job_name, metric.partition("/")[2] or "all"], value)
            elif metric.startswith("eval/ppl/"):
                ppl.add_metric([job, job_name, metric.removeprefix("eval/ppl/")], value)
            else:
                other.add_metric([job, job_name, metric], value)
        for (job, job_name), at in steps.items():
            step.add_metric([job, job_name], at)
        yield from (loss, ppl, other, step)

    def _verdicts(self, session: Session):
        verdicts = CounterMetricFamily("pretrain_verdicts", "Watchdog verdicts by kind.", labels=["kind"])
        query = select(Event.kind, func.count()).where(Event.kind.like("verdict.%")).group_by(Event.kind)
        for kind, count in session.execute(query):
            verdicts.add_metric([kind.removeprefix("verdict.")], count)
        yield verdicts

    def _rollbacks(self, session: Session):
        rollbacks = CounterMetricFamily("pretrain_rollbacks", "Rollbacks by trigger.", labels=["trigger"])
        query = select(Attempt.reason, func.count()).where(Attempt.reason.in_(["rollback", "oncall"])).group_by(Attempt.reason)
        counts = dict(session.execute(query).all())
        rollbacks.add_metric(["watchdog"], counts.get("rollback", 0))
        rollbacks.add_metric(["oncall"], counts.get("oncall", 0))
        yield rollbacks


    def _ingest_lag(self, session: Session):
        lag = GaugeMetricFamily(
            "pretrain_ingest_lag_seconds", "Seconds since a live job's newest metric point arrived.", labels=["job", "name"]
        )
        query = (
            select(Job.id, Job.name, func.max(MetricPoint.created_at))
            .join(MetricPoint, MetricPoint.job_id == Job.id)
            .where(Job.state.in_(ACTIVE_JOB_STATES))
            .group_by(Job.id, Job.name)
        )
        now = utcnow()
        for job_id, job_name, newest in session.execute(query):
            if newest is not None:
                newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
                lag.add_metric([str(job_id), job_name], max(0.0, (now - newest).total_seconds()))
        yield lag


INGESTED_POINTS = Counter("pretrain_ingested_points", "Metric points received by this API process.")


def exposition(sessions: sessionmaker[Session]) -> bytes:
    """The text format Prometheus scrapes: this process's counters plus the database's view."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(sessions))
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY) + generate_latest(registry)
