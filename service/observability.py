"""Prometheus: what the dashboards and alerts read, computed from the database at scrape time.

A scrape reads jobs, attempts, events and `latest_metrics` (each live job's newest point per
metric, kept by ingest), never whole series of metric points: its work grows with the live jobs,
their attempts and metric names, not with how much they have reported. (Goodput reads a few
points per attempt and per checkpoint, by index: `service.goodput.job_goodput`.)

Per-job series cover live jobs only (pending, running, paused, cancelling), so label
cardinality stays bounded: a finished job leaves the exporter. They carry the job's id as
`job_id` and its name as `name`; never `job`, which Prometheus gives every series as the
scrape job's name (an exported `job` would arrive renamed to `exported_job`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service import data_accounting, evaluations, goodput, progress
from service.db.models import Attempt, Event, Job, JobState, LatestMetric, utcnow
from service.lifecycle import ACTIVE_JOB_STATES
from service.spec import JobSpec

# Latest values exported per live job: the channel losses, eval PPL and throughput (tokens
# consumed per channel, `data/tokens/<channel>`, have their own family: `_data`).
EXPORTED_PREFIXES = ("loss", "eval/ppl", "throughput/", "grad_norm", "lr")
# The detector's verdict kinds and the rollback triggers: a live job exports each from zero,
# so the first one shows as an increase (Prometheus sees no increase in a series born at 1).
VERDICT_KINDS = ("spike", "divergence", "nonfinite", "drop", "ppl_rise")
ROLLBACK_TRIGGERS = {"rollback": "watchdog", "oncall": "oncall"}
# Why the trainer skipped an optimizer step (the watchdog's `trainer.step_skipped` events).
SKIP_REASONS = ("nonfinite", "grad_spike", "unknown")


class ServiceCollector:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator:
        with self.sessions() as session:
            yield from self._jobs(session)
            yield from self._latest(session)
            yield from self._data(session)
            yield from self._verdicts(session)
            yield from self._rollbacks(session)
            yield from self._skipped_steps(session)
            yield from self._ingest_lag(session)
            yield from self._progress_and_goodput(session)
            yield from self._benchmarks(session)

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
        labels = ["job_id", "name"]
        loss = GaugeMetricFamily("pretrain_loss", "Latest training loss of a live job.", labels=[*labels, "channel"])
        ppl = GaugeMetricFamily("pretrain_eval_ppl", "Latest eval perplexity of a live job.", labels=[*labels, "channel"])
        other = GaugeMetricFamily("pretrain_train_metric", "Latest throughput/optimizer metric of a live job.", labels=[*labels, "metric"])
        step = GaugeMetricFamily("pretrain_step", "Latest step a live job reported.", labels=labels)
        tokens = GaugeMetricFamily("pretrain_tokens", "Tokens a live job had trained on at its newest report.", labels=labels)
        # One row per live job and metric, kept by ingest: a scrape never reads the points.
        rows = session.execute(
            select(Job.id, Job.name, LatestMetric.name, LatestMetric.value, LatestMetric.attempt, LatestMetric.step, LatestMetric.tokens)
            .join(LatestMetric, LatestMetric.job_id == Job.id)
            .where(Job.state.in_(ACTIVE_JOB_STATES))
        )
        steps: dict[tuple[str, str], int] = {}
        # The newest report's token count: after a rollback it falls back with the step.
        seen: dict[tuple[str, str], tuple[tuple[int, int], int]] = {}
        for job_id, job_name, metric, value, attempt, at, tokens_seen in rows:
            job = (str(job_id), job_name)
            steps[job] = max(steps.get(job, 0), at)
            if tokens_seen is not None and (job not in seen or (attempt, at) > seen[job][0]):
                seen[job] = ((attempt, at), tokens_seen)
            if value is None or not metric.startswith(EXPORTED_PREFIXES):
                continue
            if metric == "loss" or metric.startswith("loss/"):
                loss.add_metric([*job, metric.partition("/")[2] or "all"], value)
            elif metric == "eval/ppl" or metric.startswith("eval/ppl/"):
                ppl.add_metric([*job, metric.removeprefix("eval/ppl").removeprefix("/") or "all"], value)
            else:
                other.add_metric([*job, metric], value)
        for job, at in steps.items():
            step.add_metric(list(job), at)
        for job, (_, count) in seen.items():
            tokens.add_metric(list(job), count)
        yield from (loss, ppl, other, step, tokens)

    def _data(self, session: Session):
        """Tokens consumed per channel (the trainer's `data/tokens/<channel>`), and what the plan
        expected of each by the same step: the realised mix against the planned one."""
        labels = ["job_id", "name", "channel"]
        consumed = GaugeMetricFamily(
            "pretrain_data_tokens", "Tokens a live job has consumed from a data channel.", labels=labels
        )
        expected = GaugeMetricFamily(
            "pretrain_data_tokens_planned",
            "Tokens the plan takes from a data channel up to a live job's newest reported step.",
            labels=labels,
        )
        live = {job_id for job_id, in session.execute(select(Job.id).where(Job.state.in_(ACTIVE_JOB_STATES)))}
        newest: dict[int, tuple[int, int]] = {}
        reported: dict[int, list[tuple[str, float]]] = {}
        for job_id, channel, value, attempt, step in data_accounting.consumed_rows(session, sorted(live)):
            newest[job_id] = max(newest.get(job_id, (attempt, step)), (attempt, step))
            if value is not None:
                reported.setdefault(job_id, []).append((channel, value))
        jobs = session.execute(select(Job.id, Job.name, Job.spec_hash).where(Job.id.in_(list(newest)))) if newest else []
        for job_id, job_name, spec_hash in jobs:
            key = [str(job_id), job_name]
            for channel, value in reported.get(job_id, []):
                consumed.add_metric([*key, channel], value)
            mixes = _stage_mixes(session, job_id, spec_hash)
            for channel, tokens in data_accounting.expected_tokens(mixes, newest[job_id][1] + 1).items():
                expected.add_metric([*key, channel], tokens)
        yield from (consumed, expected)

    def _verdicts(self, session: Session):
        verdicts = CounterMetricFamily("pretrain_verdicts", "Watchdog verdicts on a live job, by kind.", labels=["job_id", "name", "kind"])
        counts: dict[tuple[str, str], dict[str, int]] = {job: {} for job in _live_jobs(session)}
        query = (
            select(Job.id, Job.name, Event.kind, func.count())
            .join(Event, Event.job_id == Job.id)
            .where(Job.state.in_(ACTIVE_JOB_STATES), Event.kind.like("verdict.%"))
            .group_by(Job.id, Job.name, Event.kind)
        )
        for job_id, job_name, kind, count in session.execute(query):
            counts.setdefault((str(job_id), job_name), {})[kind.removeprefix("verdict.")] = count
        for job, by_kind in counts.items():
            for kind in sorted({*VERDICT_KINDS, *by_kind}):
                verdicts.add_metric([*job, kind], by_kind.get(kind, 0))
        yield verdicts

    def _rollbacks(self, session: Session):
        rollbacks = CounterMetricFamily("pretrain_rollbacks", "Rollbacks of a live job, by trigger.", labels=["job_id", "name", "trigger"])
        counts: dict[tuple[str, str], dict[str, int]] = {job: {} for job in _live_jobs(session)}
        query = (
            select(Job.id, Job.name, Attempt.reason, func.count())
            .join(Attempt, Attempt.job_id == Job.id)
            .where(Job.state.in_(ACTIVE_JOB_STATES), Attempt.reason.in_(list(ROLLBACK_TRIGGERS)))
            .group_by(Job.id, Job.name, Attempt.reason)
        )
        for job_id, job_name, reason, count in session.execute(query):
            counts.setdefault((str(job_id), job_name), {})[ROLLBACK_TRIGGERS[reason]] = count
        for job, by_trigger in counts.items():
            for trigger in ROLLBACK_TRIGGERS.values():
                rollbacks.add_metric([*job, trigger], by_trigger.get(trigger, 0))
        yield rollbacks

    def _skipped_steps(self, session: Session):
        skipped = CounterMetricFamily(
            "pretrain_steps_skipped", "Optimizer steps a live job's trainer skipped, by reason.", labels=["job_id", "name", "reason"]
        )
        counts: dict[tuple[str, str], dict[str, int]] = {job: {} for job in _live_jobs(session)}
        reason = Event.data["reason"].as_string()
        query = (
            select(Job.id, Job.name, reason, func.count())
            .join(Event, Event.job_id == Job.id)
            .where(Job.state.in_(ACTIVE_JOB_STATES), Event.kind == "trainer.step_skipped")
            .group_by(Job.id, Job.name, reason)
        )
        for job_id, job_name, why, count in session.execute(query):
            by_reason = counts.setdefault((str(job_id), job_name), {})
            key = why if why in SKIP_REASONS else "unknown"  # bounded labels, whatever an event says
            by_reason[key] = by_reason.get(key, 0) + count
        for job, by_reason in counts.items():
            for why in SKIP_REASONS:
                skipped.add_metric([*job, why], by_reason.get(why, 0))
        yield skipped

    def _benchmarks(self, session: Session):
        """Each job's newest benchmark scores per task (lm-eval on its checkpoints), finished jobs
        too: the final checkpoint is scored after the job ends. Labelled `job_id` like every family
        here (a `job` label would clash with the scrape's own)."""
        labels = ["job_id", "name", "task"]
        accuracy = GaugeMetricFamily(
            "pretrain_benchmark_accuracy",
            "Accuracy on a benchmark of a job's newest scored checkpoint (metric acc or acc_norm).",
            labels=[*labels, "metric"],
        )
        nll = GaugeMetricFamily(
            "pretrain_benchmark_nll",
            "Mean negative log-likelihood of the right option at a job's newest scored checkpoint.",
            labels=labels,
        )
        step = GaugeMetricFamily(
            "pretrain_benchmark_step", "The step of a job's newest scored checkpoint, per task.", labels=labels
        )
        names = dict(session.execute(select(Job.id, Job.name)).all())
        for row in evaluations.latest_scores(session):
            key = [str(row.job_id), names.get(row.job_id, ""), row.task]
            accuracy.add_metric([*key, "acc"], row.acc)
            accuracy.add_metric([*key, "acc_norm"], row.acc_norm)
            nll.add_metric(key, row.nll)
            step.add_metric(key, row.step)
        yield from (accuracy, nll, step)

    def _ingest_lag(self, session: Session):
        lag = GaugeMetricFamily(
            "pretrain_ingest_lag_seconds", "Seconds since a live job's newest metric point arrived.", labels=["job_id", "name"]
        )
        query = (
            select(Job.id, Job.name, func.max(LatestMetric.created_at))
            .join(LatestMetric, LatestMetric.job_id == Job.id)
            .where(Job.state.in_(ACTIVE_JOB_STATES))
            .group_by(Job.id, Job.name)
        )
        now = utcnow()
        for job_id, job_name, newest in session.execute(query):
            if newest is not None:
                newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
                lag.add_metric([str(job_id), job_name], max(0.0, (now - newest).total_seconds()))
        yield lag

    def _progress_and_goodput(self, session: Session):
        labels = ["job_id", "name"]
        done = GaugeMetricFamily("pretrain_progress_ratio", "Steps a live job has trained over all its steps.", labels=labels)
        eta = GaugeMetricFamily("pretrain_eta_seconds", "Seconds a live job has left at its newest step time.", labels=labels)
        seconds = GaugeMetricFamily(
            "pretrain_goodput_seconds",
            "Where a live job's wall time went so far: productive, lost, checkpoint, stalled, queued, startup, other.",
            labels=[*labels, "category"],
        )
        ratio = GaugeMetricFamily("pretrain_goodput_ratio", "Productive share of a live job's wall time so far.", labels=labels)
        live = list(session.scalars(select(Job).where(Job.state.in_(ACTIVE_JOB_STATES)).order_by(Job.id)))
        latest = progress.latest_rows(session, [job.id for job in live])
        now = utcnow()
        for job in live:
            key = [str(job.id), job.name]
            if (shown := progress.progress(job, latest[job.id], now=now)) is not None:
                done.add_metric(key, shown.percent / 100)
                if shown.eta_s is not None:
                    eta.add_metric(key, shown.eta_s)
            split = goodput.job_goodput(session, job, now=now)
            for category, value in split.seconds.items():
                seconds.add_metric([*key, category], value)
            ratio.add_metric(key, split.ratio)
        yield from (done, eta, seconds, ratio)


# A job's stage mixes by (id, spec hash): a scrape parses a live job's spec once, not every time.
_MIXES: dict[tuple[int, str], list] = {}
_MIXES_KEPT = 4096


def _stage_mixes(session: Session, job_id: int, spec_hash: str) -> list:
    mixes = _MIXES.get((job_id, spec_hash))
    if mixes is None:
        job = session.get(Job, job_id)
        spec, derivation = job.spec, job.derivation
        pretraining = isinstance(spec, JobSpec) and derivation is not None
        mixes = data_accounting.stage_mixes(spec, derivation.stages) if pretraining else []
        if len(_MIXES) >= _MIXES_KEPT:
            _MIXES.clear()
        _MIXES[(job_id, spec_hash)] = mixes
    return mixes


def _live_jobs(session: Session) -> list[tuple[str, str]]:
    """(id, name) of every job that is not finished."""
    query = select(Job.id, Job.name).where(Job.state.in_(ACTIVE_JOB_STATES)).order_by(Job.id)
    return [(str(job_id), name) for job_id, name in session.execute(query)]


INGESTED_POINTS = Counter("pretrain_ingested_points", "Metric points received by this API process.")


def exposition(sessions: sessionmaker[Session]) -> bytes:
    """The text format Prometheus scrapes: this process's counters plus the database's view."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(sessions))
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY) + generate_latest(registry)
