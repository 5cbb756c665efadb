"""Tables: jobs, their attempts, checkpoints, metric points, the audit log, API tokens and scaling fits."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from service.jobspec import (
    SPEC_VERSION,
    Derivation,
    load_derivation,
    load_plan,
    load_spec,
)
from service.planner import Plan
from service.spec import DataJobSpec, JobSpec, TokenizerJobSpec, WatchdogSpec

# Stable constraint names so Alembic migrations agree on SQLite and Postgres.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONDocument = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY; Postgres gets a real bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use service.db.models.utcnow()")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class JobState(enum.StrEnum):
    """A job's state; which moves between them are allowed is service.lifecycle's to say."""

    PENDING = "pending"
    QUEUED = "queued"  # its workload waits for admission (Kueue); state_reason says why
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The states in which a job holds its name: service.lifecycle's active ones, as the schema
# (migration 0008) spells them; a test holds the two equal, and a change needs a migration.
LIVE_NAME_STATES = "state IN ('pending', 'queued', 'running', 'paused', 'cancelling')"


class DesiredState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"


class AttemptState(enum.StrEnum):
    """An attempt's state; which moves between them are allowed is service.lifecycle's to say."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


class AttemptReason(enum.StrEnum):
    LAUNCH = "launch"
    POD_FAILURE = "pod_failure"
    ROLLBACK = "rollback"
    ONCALL = "oncall"
    RESUME = "resume"
    PREEMPTED = "preempted"  # the trainer saved on SIGTERM and said so: not a pod failure
    BAD_CHECKPOINT = "bad_checkpoint"  # the trainer refused its resume checkpoint as corrupt
    STALL = "stall"  # no new step for the stall timeout while it ran: restarted, no data skipped

    @property
    def is_rollback(self) -> bool:
        """A rollback (watchdog, trainer or on-call) replaces the data and LR; restarts do not."""
        return self in (AttemptReason.ROLLBACK, AttemptReason.ONCALL)


class Role(enum.StrEnum):
    """Roles in rising order of power; each may do what the ones below it may."""

    VIEWER = "viewer"
    SUBMITTER = "submitter"
    ONCALL = "oncall"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, required: Role) -> bool:
        return self.rank >= required.rank


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONDocument, list[Any]: JSONDocument}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32), default="pretrain")
    owner: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING)
    desired_state: Mapped[str] = mapped_column(String(16), default=DesiredState.RUNNING)
    state_reason: Mapped[str | None] = mapped_column(Text)
    # The stored JSON; readers use the typed `spec` below. Column "spec", as the API shows it.
    spec_document: Mapped[dict[str, Any]] = mapped_column("spec")
    # Rows stored before versions were recorded are version 1, what they were written as.
    spec_version: Mapped[int] = mapped_column(
        Integer, default=SPEC_VERSION, server_default=text("1")
    )
    spec_hash: Mapped[str] = mapped_column(String(64))
    derived: Mapped[dict[str, Any]]
    warnings: Mapped[list[Any]]
    plan: Mapped[dict[str, Any] | None]
    # What a finished job made, as its workload reported it (tokenizer jobs: path and report).
    result: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="job", order_by="Attempt.number", cascade="all, delete-orphan"
    )

    @property
    def spec(self) -> JobSpec | TokenizerJobSpec | DataJobSpec:
        """The spec as admission validated it, read from the stored JSON once."""
        return self._typed("spec", self.spec_document, lambda d: load_spec(d, version=self.spec_version))

    @property
    def pretrain_spec(self) -> JobSpec:
        """The spec of a pretraining job; TypeError for a job of another kind."""
        spec = self.spec
        if not isinstance(spec, JobSpec):
            raise TypeError(f"job {self.id} is a {spec.kind} job, not a pretraining job")
        return spec

    @property
    def derivation(self) -> Derivation | None:
        """The resolved model and derived numbers; None for a tokenizer job."""
        return self._typed("derivation", self.derived, load_derivation)

    @property
    def memory_plan(self) -> Plan | None:
        """The plan admission made; None for a tokenizer job."""
        return self._typed("plan", self.plan, load_plan)

    @property
    def watchdog(self) -> WatchdogSpec:
        """The loss watchdog's policy; a tokenizer job, which reports no loss, has the default."""
        spec = self.spec
        return spec.watchdog if isinstance(spec, JobSpec) else WatchdogSpec()

    def _typed(self, name: str, document: Any, load: Any) -> Any:
        # Parsed once per row and document: a refreshed row that got a new document parses anew.
        cache = self.__dict__.setdefault("_typed_cache", {})
        held = cache.get(name)
        if held is None or held[0] is not document:
            held = cache[name] = (document, load(document))
        return held[1]

    __table_args__ = (
        Index("ix_jobs_state_id", "state", "id"),
        Index("ix_jobs_owner_id", "owner", "id"),
        Index("ix_jobs_spec_hash", "spec_hash"),
        # Workloads are named after the job, so two live jobs may not share a name.
        Index(
            "uq_jobs_active_name",
            "name",
            unique=True,
            postgresql_where=text(LIVE_NAME_STATES),
            sqlite_where=text(LIVE_NAME_STATES),
        ),
    )


class Attempt(Base):
    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=AttemptState.PENDING)
    reason: Mapped[str] = mapped_column(String(16), default=AttemptReason.LAUNCH)
    resume_from_checkpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL")
    )
    skip_ranges: Mapped[list[Any]] = mapped_column(default=list)
    lr_scale: Mapped[float] = mapped_column(Float, default=1.0)
    state_reason: Mapped[str | None] = mapped_column(Text)
    # How the trainer itself said the attempt ended (trainer outcome: completed, diverged,
    # preempted, corrupt_checkpoint, bad_config, crashed); None until it ends or if it said nothing.
    outcome: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    job: Mapped[Job] = relationship(back_populates="attempts")

    __table_args__ = (UniqueConstraint("job_id", "number"),)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    path: Mapped[str] = mapped_column(Text)
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    usable: Mapped[bool] = mapped_column(Boolean, default=True)
    # Why a checkpoint may not be restored (pruned, rolled back past, superseded, missing, corrupt).
    unusable_reason: Mapped[str | None] = mapped_column(Text)
    # When the service handed it to a trainer to delete, and the registration that answered so
    # (a retried registration gets the same list back).
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pruned_by: Mapped[int | None] = mapped_column(BigId)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "step"),
        Index("ix_checkpoints_job_step", "job_id", "step"),
    )


class MetricPoint(Base):
    __tablename__ = "metric_points"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(128))
    # NULL with `nonfinite` set: SQLite cannot store NaN, so the kind of non-finite is kept apart.
    value: Mapped[float | None] = mapped_column(Float)
    nonfinite: Mapped[str | None] = mapped_column(String(16))
    stage: Mapped[str | None] = mapped_column(String(64))
    phase: Mapped[str | None] = mapped_column(String(16))
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "step", "name"),
        Index("ix_metric_points_job_name_step", "job_id", "name", "step"),
    )


class LatestMetric(Base):
    """A job's newest point of each metric, kept by ingest so that a /metrics scrape reads one
    row per (job, metric) instead of grouping every stored point. Newest is the highest
    (attempt, step): a rollback's new attempt replaces what its predecessor reported."""

    __tablename__ = "latest_metrics"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    # NULL for a non-finite value, as in metric_points: the scrape exports no sample for it.
    value: Mapped[float | None] = mapped_column(Float)
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Event(Base):
    """The audit log: who did what to which job, when and why."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_events_job_id_id", "job_id", "id"),)


class ApiToken(Base):
    """A bearer token, stored only as its SHA-256; `job_id` scopes a trainer's ingest token."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    # A trainer's ingest token is scoped to one attempt of its job (None: the whole job).
    attempt: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WatchdogState(Base):
    """A watchdog consumer's detector state and stream cursor, saved with every batch it handles."""

    __tablename__ = "watchdog_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cursor: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ScalingFitRecord(Base):
    """A saved scaling-law fit; the newest is the install's current law, which plans predict with."""

    __tablename__ = "scaling_fits"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Where the runs came from: "runs" (posted, e.g. a CSV) or "jobs" (this install's finished jobs).
    source: Mapped[str] = mapped_column(String(16))
    runs: Mapped[int] = mapped_column(Integer)
    # The fit as `service.scaling.ScalingFit` dumps it; read back typed through that model.
    fit: Mapped[dict[str, Any]]
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
