"""Data accounting during the run: tokens consumed per channel against what the plan expected.

The trainer reports, in each training record, the tokens each channel has consumed so far as
`data/tokens/<channel>`; ingest keeps the newest of each in `latest_metrics`. The plan
expects, by step `s` (steps 0..s trained), each stage's tokens per step × its channel's
normalised weight summed over the steps trained in that stage. Both are read from
`latest_metrics` and the stored spec only, never from the metric points: the API's
`GET /v1/jobs/{id}/data` and the Prometheus exporter answer in time independent of how long
the job has run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Job, LatestMetric
from service.errors import Conflict
from service.planner import DataPlan
from service.planner.data import data_train_share
from service.spec import JobSpec
from service.spec.stages import StagePlan

TOKENS_PREFIX = "data/tokens/"


class ChannelAccount(BaseModel):
    """One channel: planned over the run and by now, consumed by now, and the two mixes."""

    channel: str
    paths: list[str] = Field(description="The sources the channel reads, in stage order.")
    tokens_planned: int = Field(description="Tokens the plan takes from the channel over the whole run.")
    tokens_expected: int | None = Field(
        description="Tokens the plan takes from the channel up to the newest reported step; null before any report."
    )
    tokens_consumed: int | None = Field(
        description="Tokens the trainer reported consumed (`data/tokens/<channel>`, newest); null if never reported."
    )
    share_planned: float | None = Field(description="tokens_expected / all channels' tokens_expected: the planned mix by now.")
    share_consumed: float | None = Field(description="tokens_consumed / all channels' tokens_consumed: the realised mix.")
    size_tokens: int | None = Field(description="The source's size when the channel reads one source of known size.")
    epochs_consumed: float | None = Field(
        description="tokens_consumed / (size_tokens × the split's train share): epochs of what is trained on."
    )


class JobDataAccount(BaseModel):
    """A job's data, planned against consumed, per channel."""

    job_id: int
    attempt: int | None = Field(description="Attempt of the newest report with consumed tokens; null before any.")
    step: int | None = Field(description="Step of that report (steps 0..step trained).")
    tokens_planned: int
    tokens_expected: int | None
    tokens_consumed: int | None
    channels: list[ChannelAccount]
    plan: DataPlan | None = Field(
        description="The plan's data section as admission stored it (per stage and source, sizes, epochs); "
        "null for jobs planned before it existed."
    )


def stage_mixes(spec: JobSpec, stages: Sequence[StagePlan]) -> list[tuple[int, int, dict[str, float]]]:
    """Per stage: (steps, tokens per step, channel → normalised weight)."""
    mixes = []
    for stage, planned in zip(spec.stages, stages, strict=True):
        total = math.fsum(source.weight for source in stage.data)
        weights: dict[str, float] = {}
        for source in stage.data:
            weights[source.channel] = weights.get(source.channel, 0.0) + source.weight / total
        mixes.append((planned.train_iters, planned.tokens_per_step, weights))
    return mixes


def expected_tokens(mixes: Iterable[tuple[int, int, dict[str, float]]], steps_done: int | None) -> dict[str, int]:
    """Tokens per channel the plan takes in its first `steps_done` steps (None: the whole run)."""
    expected: dict[str, float] = {}
    left = math.inf if steps_done is None else steps_done
    for steps, per_step, weights in mixes:
        taken = min(steps, left)
        for channel, weight in weights.items():
            expected[channel] = expected.get(channel, 0.0) + taken * per_step * weight
        left -= taken
    return {channel: round(tokens) for channel, tokens in expected.items()}


def consumed_rows(session: Session, job_ids: Sequence[int] | None = None):
    """(job_id, channel, value, attempt, step) of the newest `data/tokens/<channel>` points."""
    query = select(LatestMetric.job_id, LatestMetric.name, LatestMetric.value, LatestMetric.attempt, LatestMetric.step).where(
        LatestMetric.name.startswith(TOKENS_PREFIX, autoescape=True)
    )
    if job_ids is not None:
        query = query.where(LatestMetric.job_id.in_(list(job_ids)))
    for job_id, name, value, attempt, step in session.execute(query):
        yield job_id, name.removeprefix(TOKENS_PREFIX), value, attempt, step


def account(session: Session, job: Job) -> JobDataAccount:
    """Planned against consumed for one pretraining job (Conflict for another kind)."""
    spec, derivation = job.spec, job.derivation
    if not isinstance(spec, JobSpec) or derivation is None:
        raise Conflict(f"job {job.id} is a {spec.kind} job: it trains on no data channels")
    consumed: dict[str, float] = {}
    newest: tuple[int, int] | None = None
    for _, channel, value, attempt, step in consumed_rows(session, [job.id]):
        if value is not None:
            consumed[channel] = value
        newest = max(newest or (attempt, step), (attempt, step))
    mixes = stage_mixes(spec, derivation.stages)
    planned = expected_tokens(mixes, None)
    expected = expected_tokens(mixes, newest[1] + 1) if newest is not None else None
    plan = job.memory_plan.data if job.memory_plan is not None else None
    paths = _paths(spec)
    sizes = _single_source_sizes(plan, paths)
    share = data_train_share(spec.data.split)
    channels = list(planned) + sorted(set(consumed) - set(planned))
    expected_total = sum(expected.values()) if expected else 0
    consumed_total = sum(consumed.values())
    accounts = []
    for channel in channels:
        used = consumed.get(channel)
        size = sizes.get(channel)
        accounts.append(
            ChannelAccount(
                channel=channel,
                paths=paths.get(channel, []),
                tokens_planned=planned.get(channel, 0),
                tokens_expected=None if expected is None else expected.get(channel, 0),
                tokens_consumed=None if used is None else round(used),
                share_planned=expected.get(channel, 0) / expected_total if expected and expected_total else None,
                share_consumed=used / consumed_total if used is not None and consumed_total else None,
                size_tokens=size,
                epochs_consumed=used / (size * share) if used is not None and size else None,
            )
        )
    return JobDataAccount(
        job_id=job.id,
        attempt=None if newest is None else newest[0],
        step=None if newest is None else newest[1],
        tokens_planned=sum(planned.values()),
        tokens_expected=None if expected is None else expected_total,
        tokens_consumed=round(consumed_total) if consumed else None,
        channels=accounts,
        plan=plan,
    )


def _paths(spec: JobSpec) -> dict[str, list[str]]:
    paths: dict[str, list[str]] = {}
    for stage in spec.stages:
        for source in stage.data:
            known = paths.setdefault(source.channel, [])
            if source.path not in known:
                known.append(source.path)
    return paths


def _single_source_sizes(plan: DataPlan | None, paths: dict[str, list[str]]) -> dict[str, int]:
    if plan is None:
        return {}
    size_of = {source.path: source.size_tokens for stage in plan.stages for source in stage.sources}
    return {
        channel: size
        for channel, named in paths.items()
        if len(named) == 1 and (size := size_of.get(named[0])) is not None
    }
