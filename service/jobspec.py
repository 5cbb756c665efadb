"""The stored job, typed: the JSON a job row keeps, read back into the models that wrote it.

Admission validates a spec once and stores `JobSpec.model_dump(mode="json")` (or the
tokenizer job's), the resolved model with the derived numbers, and the plan. Every later
reader gets these models back through the `Job` row's accessors (`job.spec`,
`job.derivation`, `job.memory_plan`, `job.watchdog`), never the dicts: a default lives in
the model that declares it and nowhere else.

`SPEC_VERSION` is stored with each job. A change to the spec models that old rows would no
longer validate against bumps it, and `load_spec` learns to upgrade the older documents.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from service.planner import Plan
from service.presets import ModelArch
from service.spec import DataJobSpec, Derived, JobSpec, TokenizerJobSpec

SPEC_VERSION = 1
"""Schema version of the spec documents this service writes (jobs.spec_version)."""

AnyJobSpec = Annotated[JobSpec | TokenizerJobSpec | DataJobSpec, Field(discriminator="kind")]
_ANY_JOB_SPEC: TypeAdapter[JobSpec | TokenizerJobSpec | DataJobSpec] = TypeAdapter(AnyJobSpec)


class StoredSpecUnreadable(ValueError):
    """A stored spec this service cannot read: a newer version, or a document it never wrote."""


class Derivation(Derived):
    """What admission derived for a pretraining job, as jobs.derived keeps it."""

    model: ModelArch = Field(description="The resolved architecture: preset merged with overrides.")


def load_spec(
    document: dict[str, Any], *, version: int
) -> JobSpec | TokenizerJobSpec | DataJobSpec:
    """The typed spec of a stored document, by the version it was stored with."""
    if version != SPEC_VERSION:
        raise StoredSpecUnreadable(
            f"the spec was stored as version {version}; this service reads version {SPEC_VERSION}"
        )
    try:
        return _ANY_JOB_SPEC.validate_python(document)
    except ValueError as exc:
        raise StoredSpecUnreadable(f"the stored spec does not validate: {exc}") from exc


def load_derivation(document: dict[str, Any]) -> Derivation | None:
    """The stored model and derived numbers; None for a job that derives nothing (tokenizer)."""
    return Derivation.model_validate(document) if document else None


def load_plan(document: dict[str, Any] | None) -> Plan | None:
    """The stored plan; None for a job that was not planned (tokenizer)."""
    return None if document is None else Plan.model_validate(document)

