"""Wire models: what the API accepts and returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.db.models import Role

# Postgres cannot store U+0000 in text; free-text fields refuse it at the edge.
NO_NUL = r"^[^\x00]*$"


class AttemptPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    state: str
    reason: str = Field(description="Why the attempt was opened: launch, pod_failure, rollback, oncall, resume.")
    resume_from_checkpoint_id: int | None
    skip_ranges: list[Any]
    lr_scale: float
    state_reason: str | None
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
    spec: dict[str, Any]
    spec_hash: str
    derived: dict[str, Any] = Field(description="Resolved model and what follows from the spec: world size, data parallel, iterations per stage.")
    warnings: list[Any] = Field(description="Normalisations the service made instead of refusing; each with loc and msg.")
    plan: dict[str, Any] | None
    attempts: list[AttemptPublic]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="Jobs matching the filters, over all pages.")
    next_cursor: int | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class JobCancel(BaseModel):
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
