"""Planning a spec as the API and CLI present it: the planner's figures plus what blocks a launch."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from service.planner import Plan, memory_problems, plan_job
from service.spec import Problem, SpecInvalid, ValidatedTokenizerSpec, validate_spec


class PlanReport(Plan):
    """A plan, the spec's own warnings, and the problems that would refuse it at submission."""

    spec_warnings: list[Problem] = Field(description="Normalisations the spec validation made.")
    problems: list[Problem] = Field(
        description="Why POST /v1/jobs would refuse this spec (memory); empty when it would run."
    )


def plan_spec(raw: dict[str, Any], **inverse: Any) -> PlanReport:
    """Validate a raw spec (raising SpecInvalid) and plan it, without refusing what does not fit."""
    validated = validate_spec(raw)
    if isinstance(validated, ValidatedTokenizerSpec):
        resources = validated.spec.resources
        raise SpecInvalid(
            [
                Problem(
                    loc=["kind"],
                    msg="a tokenizer job has no memory or compute plan: it runs on one CPU "
                    f"machine with resources.cpu {resources.cpu} and resources.memory_gib "
                    f"{resources.memory_gib:g}; the spec is valid, submit it as it is",
                )
            ]
        )
    plan = plan_job(validated, **inverse)
    return PlanReport(
        **plan.model_dump(),
        spec_warnings=validated.warnings,
        problems=memory_problems(validated, plan),
    )
