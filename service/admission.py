"""Admission: the one path from a raw spec to what a job is planned, stored and launched with.

`admit()` validates, plans and derives, in that order, for every caller: submission
(`jobs.submit_job`), the review (`controller.manifests.render_for_review`), POST /v1/plan and
`pretrainctl plan`. The callers differ only in the options they pass, so they refuse and
accept the same specs for the same reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import Field

from service.planner import Plan, memory_problems, plan_job
from service.scaling.predict import ScalingPrediction
from service.settings import Settings, get_settings
from service.sources import sizes_for, source_problems
from service.spec import (
    PathPolicy,
    Problem,
    SpecInvalid,
    ValidatedDataSpec,
    ValidatedSpec,
    ValidatedTokenizerSpec,
    validate_spec,
)


class OverMemory(StrEnum):
    """What admission does with a plan that does not fit in GPU memory."""

    REFUSE = "refuse"  # raise SpecInvalid, as submission and the review do
    REPORT = "report"  # return the problems in Admission.problems, as planning does


class PlanReport(Plan):
    """A plan, the spec's own warnings, and the problems that would refuse it at submission."""

    spec_warnings: list[Problem] = Field(description="Normalisations the spec validation made.")
    problems: list[Problem] = Field(
        description="Why POST /v1/jobs would refuse this spec (memory); empty when it would run."
    )
    scaling: ScalingPrediction | None = Field(
        None,
        description="What the install's saved scaling law predicts for the spec's 6ND budget; "
        "null when no law is saved (POST /v1/scaling/fit?save=true).",
    )


@dataclass(frozen=True)
class Admission:
    """A spec that passed admission: validated, planned (pretraining only) and derived."""

    validated: ValidatedSpec | ValidatedTokenizerSpec | ValidatedDataSpec
    # None for a tokenizer or data job: it runs on one CPU machine, with nothing to plan.
    plan: Plan | None
    # Memory problems, non-empty only when admitted with OverMemory.REPORT.
    problems: list[Problem]

    @property
    def warnings(self) -> list[Problem]:
        """The spec's warnings, then the plan's, each with the field it concerns."""
        plan_warnings = self.plan.warnings if self.plan is not None else []
        return self.validated.warnings + [
            Problem(loc=["plan"], msg=warning, type="warning") for warning in plan_warnings
        ]

    @property
    def derived_document(self) -> dict[str, Any]:
        """The resolved model and derived numbers as a job stores them; empty for a tokenizer."""
        if not isinstance(self.validated, ValidatedSpec):
            return {}
        return {
            "model": self.validated.model.model_dump(mode="json"),
            **self.validated.derived.model_dump(mode="json"),
        }

    @property
    def plan_document(self) -> dict[str, Any] | None:
        """The plan as a job stores it; None for a tokenizer job."""
        return self.plan.model_dump(mode="json") if self.plan is not None else None

    def report(self) -> PlanReport:
        """The plan as POST /v1/plan and `pretrainctl plan` present it."""
        assert self.plan is not None, "admit with require_plan=True to report a plan"
        return PlanReport(
            **self.plan.model_dump(), spec_warnings=self.validated.warnings, problems=self.problems
        )


def admit(
    raw: dict[str, Any],
    *,
    over_memory: OverMemory,
    settings: Settings | None = None,
    require_plan: bool = False,
    gpus: int | None = None,
    days: float | None = None,
    token_budget: int | None = None,
    deadline_days: float | None = None,
) -> Admission:
    """Validate, plan and derive a raw spec; SpecInvalid lists every reason it is refused.

    Every path in the spec must be one `settings` (default: the process's) allow, see
    `path_policy`. `over_memory` says whether a plan that does not fit refuses the spec or is reported;
    `require_plan` refuses a tokenizer job, which has no plan, instead of admitting it without
    one. `gpus`/`days` and `deadline_days` add the plan's inverse answers.
    """
    policy = path_policy(settings or get_settings())
    validated = validate_spec(raw, policy)
    if isinstance(validated, ValidatedTokenizerSpec | ValidatedDataSpec):
        if require_plan:
            raise SpecInvalid([_no_plan_for_a_batch_job(validated)])
        return Admission(validated=validated, plan=None, problems=[])
    sizes = sizes_for(validated.spec, policy)
    # A submission, not a plan: planning before the data is prepared is fine (its size is unknown).
    if not require_plan and (missing := source_problems(validated.spec, policy, sizes)):
        raise SpecInvalid(missing)
    plan = plan_job(
        validated,
        gpus=gpus,
        days=days,
        token_budget=token_budget,
        deadline_days=deadline_days,
        source_sizes=sizes,
    )
    problems = memory_problems(validated, plan)
    if problems and over_memory is OverMemory.REFUSE:
        raise SpecInvalid(problems)
    return Admission(validated=validated, plan=plan, problems=problems)


def plan_spec(raw: dict[str, Any], settings: Settings | None = None, **inverse: Any) -> PlanReport:
    """Plan a raw spec without refusing what does not fit (SpecInvalid if it is invalid)."""
    return admit(
        raw, over_memory=OverMemory.REPORT, settings=settings, require_plan=True, **inverse
    ).report()


def path_policy(settings: Settings) -> PathPolicy:
    """Where this install lets a spec point: its allowed roots and schemes; relative paths lie
    under the data root (the checkpoint root for checkpoint paths)."""
    assert settings.checkpoint_root is not None  # filled in by the settings themselves
    return PathPolicy(
        roots=tuple(settings.allowed_path_roots),
        schemes=tuple(settings.path_schemes),
        data_root=settings.data_root,
        checkpoint_root=settings.checkpoint_root,
    )


def _no_plan_for_a_batch_job(validated: ValidatedTokenizerSpec | ValidatedDataSpec) -> Problem:
    resources = validated.spec.resources
    return Problem(
        loc=["kind"],
        msg=f"a {validated.spec.kind} job has no memory or compute plan: it runs on one CPU "
        f"machine with resources.cpu {resources.cpu} and resources.memory_gib "
        f"{resources.memory_gib:g}; the spec is valid, submit it as it is",
    )
