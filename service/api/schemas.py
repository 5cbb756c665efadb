"""Wire models: what the API accepts and returns."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    with_config,
)
from typing_extensions import TypedDict  # pydantic reads TypedDicts from here below Python 3.12

from service.db.models import Role
from service.goodput import CATEGORIES
from service.progress import JobProgress

# Postgres cannot store U+0000 in text; free-text fields refuse it at the edge.
NO_NUL = r"^[^\x00]*$"


class AttemptPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    state: str
    reason: str = Field(description="Why the attempt was opened: launch, pod_failure, rollback, oncall, resume, preempted, bad_checkpoint, stall.")
    resume_from_checkpoint_id: int | None
    skip_ranges: list[Any]
    lr_scale: float
    state_reason: str | None
    outcome: str | None = Field(
        None, description="How the trainer said the attempt ended: completed, diverged, preempted, corrupt_checkpoint, bad_config, crashed."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    owner: str
    state: str
    desired_state: str
    state_reason: str | None
    # The row's stored JSON, as submitted with defaults filled in (`Job.spec` is its typed model).
    spec: dict[str, Any] = Field(validation_alias=AliasChoices("spec_document", "spec"))
    spec_hash: str
    derived: dict[str, Any] = Field(description="Resolved model and what follows from the spec: world size, data parallel, iterations per stage.")
    warnings: list[Any] = Field(description="Normalisations the service made instead of refusing; each with loc and msg.")
    plan: dict[str, Any] | None
    result: dict[str, Any] | None = Field(
        None,
        description="What the finished job made, as its workload reported it; tokenizer jobs: "
        "{attempt, path, report}, the tokenizer's directory and the library's report; data jobs: the "
        ".bin/.idx pair's prefix and its sidecar (tokenizer fingerprint, documents, tokens, dtype). "
        "Null until then.",
    )
    attempts: list[AttemptPublic]
    progress: JobProgress | None = Field(
        None,
        description="Steps done of all stages, recent tokens/s and ETA, from the newest reports; null for "
        "tokenizer and data jobs.",
    )
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class GoodputCategory(BaseModel):
    seconds: float
    fraction: float = Field(description="Of the wall time.")


class GoodputPublic(BaseModel):
    """Where a job's wall time went; the categories add up to `wall_s`."""

    job_id: int
    state: str
    started_at: datetime = Field(description="When the job was submitted.")
    ended_at: datetime = Field(description="When it finished, or now while it is active.")
    wall_s: float
    goodput: float = Field(description="productive / wall: the share of the wall time that went into the final model.")
    categories: dict[str, GoodputCategory] = Field(
        description=f"Seconds and fraction per category: {', '.join(CATEGORIES)}. productive: training whose "
        "work survives; lost: training thrown away by a rollback, or past the last checkpoint at a pod failure, "
        "preemption or stall; checkpoint: saves and loads; stalled: last step to the stall verdict; queued: "
        "waiting for admission; startup: opening to first step; other: the rest (teardown, detection, pauses)."
    )
    lost_steps: int = Field(description="Steps trained and then thrown away.")
    planned_training_s: float | None = Field(description="The planner's estimate of the training time (its days), null without a plan.")
    realised_training_s: float = Field(description="Training time that went into the model so far: the productive seconds.")


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="Jobs matching the filters, over all pages.")
    next_cursor: int | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class ActionReason(BaseModel):
    """The optional body of cancel, pause and resume: why, for the audit log."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(
        None, max_length=2000, pattern=NO_NUL, description="Why, for the audit log."
    )


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int | None
    attempt: int | None
    kind: str
    actor: str
    reason: str | None
    data: dict[str, Any]
    created_at: datetime


class EventsPublic(BaseModel):
    data: list[EventPublic]
    count: int
    next_cursor: int | None = Field(description="Pass as `after` for the next page; null on the last.")


class LogsPublic(BaseModel):
    job_id: int
    attempt: int
    text: str = Field(description="The attempt's trainer log (its end, at most 1 MiB).")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@-]+$", description="Who holds the token; becomes the owner of jobs it submits.")
    role: Role


class TokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: str
    prefix: str = Field(description="The token's first characters, to recognise it without the secret.")
    job_id: int | None
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="The secret itself; shown once, stored only as a hash.")


class PrincipalPublic(BaseModel):
    name: str
    role: Role


class Health(BaseModel):
    status: str
    detail: str | None = None


class CheckpointReport(BaseModel):
    """What a trainer sends once a checkpoint is published and sealed by its manifest."""

    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(ge=0, le=1_000_000)
    step: int = Field(ge=0, le=2**53)
    tokens: int = Field(ge=0, le=2**62)
    path: str = Field(min_length=1, max_length=4096, pattern=NO_NUL)
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class JobResultReport(BaseModel):
    """What a finished workload sends: where its output is and the report it made."""

    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(ge=0, le=1_000_000, description="The attempt reporting.")
    path: str = Field(min_length=1, max_length=4096, pattern=NO_NUL, description="Where the output was written.")
    report: dict[str, Any] = Field(description="The workload's report, as it made it (tokenizer jobs: layout, expansion, compression; data jobs: the sidecar).")


Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
NonNegativeFinite = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]


class TaskScore(BaseModel):
    """One task's scores as the runner (`trainer.benchmarks`) writes them."""

    model_config = ConfigDict(extra="ignore")

    task: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")
    acc: Share = Field(description="Share of items whose correct option had the highest log-likelihood.")
    acc_stderr: NonNegativeFinite | None = None
    acc_norm: Share = Field(description="The same with log-likelihoods normalised by the options' length.")
    acc_norm_stderr: NonNegativeFinite | None = None
    nll: NonNegativeFinite = Field(description="Mean negative log-likelihood of the correct option.")
    samples: int = Field(ge=0, le=10**9, description="Items scored.")
    num_fewshot: int = Field(ge=0, le=1000)


class EvaluationReport(BaseModel):
    """What an evaluation workload sends: the scores of one checkpoint step, every task."""

    model_config = ConfigDict(extra="ignore")

    step: int = Field(ge=0, le=10**12, description="The checkpoint step scored.")
    results: list[TaskScore] = Field(min_length=1, max_length=64)


class EvaluationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    task: str
    state: str = Field(description="pending, running, succeeded or failed.")
    acc: float | None
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None
    nll: float | None = Field(description="Mean negative log-likelihood of the correct option.")
    samples: int | None
    num_fewshot: int
    error: str | None = Field(description="Why a failed evaluation failed.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EvaluationsPublic(BaseModel):
    evaluations: list[EvaluationPublic]


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    attempt: int
    step: int
    tokens: int
    path: str
    verified: bool
    usable: bool
    unusable_reason: str | None = Field(
        None, description="Why it may not be restored: pruned, rolled back past, superseded, overwritten, missing, corrupt."
    )
    pruned_at: datetime | None = Field(None, description="When the service handed it to a trainer to delete.")
    created_at: datetime


class CheckpointToPrune(BaseModel):
    """A checkpoint the trainer should delete, if the manifest there still has this sha256."""

    model_config = ConfigDict(from_attributes=True)

    path: str
    step: int
    attempt: int
    manifest_sha256: str


class CheckpointRegistered(CheckpointPublic):
    prune: list[CheckpointToPrune] = Field(
        description="Checkpoints the service marked unusable for retention (or found unusable) "
        "and no attempt resumes from: delete each whose manifest still has its sha256."
    )


MetricValue = Annotated[float, Field(allow_inf_nan=False)] | Literal["NaN", "Infinity", "-Infinity"]
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_./:-]+$")]
MAX_RECORDS_PER_BATCH = 5_000


# A TypedDict, not a model: a batch of thousands is validated in one pass from the raw JSON
# straight into the dicts the store and the watchdog read. Strict, because the JSON the trainer
# sent is what the watchdog stream carries: a step of "5" or 5.0 must not get past this point.
@with_config(ConfigDict(extra="forbid", strict=True))
class MetricRecord(TypedDict):
    """One trainer record: a step's metrics (non-finite values as strings)."""

    job: Annotated[str, Field(max_length=64, description="The job id, as the trainer knows it.")]
    attempt: Annotated[int, Field(ge=0, le=1_000_000, description="The attempt reporting: the job's newest.")]
    step: Annotated[int, Field(ge=0, le=2**53, description="The optimizer step, at most the job's total steps.")]
    stage: NotRequired[Annotated[str | None, Field(max_length=64, pattern=NO_NUL)]]
    phase: NotRequired[Annotated[str | None, Field(max_length=16, pattern=NO_NUL)]]
    tokens: NotRequired[Annotated[int | None, Field(ge=0, le=2**62)]]
    metrics: Annotated[dict[MetricName, MetricValue], Field(max_length=1000)]


MetricBatch = TypeAdapter(Annotated[list[MetricRecord], Field(max_length=MAX_RECORDS_PER_BATCH)])


class MetricsAccepted(BaseModel):
    received: int = Field(description="Metric points in the batch.")
    stored: int = Field(description="Points newly stored; duplicates of stored points are ignored.")


class MetricPointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempt: int
    step: int
    name: str
    value: float | None
    nonfinite: str | None
    stage: str | None
    phase: str | None
    tokens: int | None


class RollbackCreate(BaseModel):
    """On-call's rollback: back to a checkpoint, skip data, optionally scale the LR."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, pattern=NO_NUL, description="Why, for the audit log.")
    to_step: int | None = Field(None, ge=0, le=2**53, description="Resume from the newest good checkpoint at or before this step; default: the newest good one.")
    skip_steps: int | None = Field(None, ge=0, le=2**53, description="Steps of data to skip after the checkpoint; default: up to the latest step + skip_steps_after.")
    lr_scale: float | None = Field(None, gt=0, le=10, description="Learning-rate multiplier for the new attempt.")
    attempt: int | None = Field(None, ge=0, le=1_000_000, description="The attempt you are rolling back; another attempt in its place is a 409.")


class RollbackPublic(BaseModel):
    job: JobPublic
    attempt: int | None = Field(description="The new attempt; null when the job was paused instead.")
    checkpoint: CheckpointPublic | None
    skip_range: list[int] | None = Field(description="Batch indices [start, end) the new attempt never trains on.")
    paused: bool = Field(description="True when the rollback cap was reached: the job waits for a person.")
