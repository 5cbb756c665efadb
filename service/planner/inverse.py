"""The plan read backwards: tokens a GPU budget buys, GPUs a deadline needs."""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from service.planner.compute import (
    SECONDS_PER_DAY,
    Compute,
    achieved_flops_per_second,
    budget_flops,
)
from service.spec import MAX_GPUS_PER_NODE, MAX_NODES, Problem, SpecInvalid, ValidatedSpec

# The most GPUs a job can ask for; a deadline that needs more has no answer worth printing.
MAX_GPUS = MAX_NODES * MAX_GPUS_PER_NODE


class TokensForBudget(BaseModel):
    """Tokens this model can see on `gpus` for `days` at `mfu`."""

    gpus: int
    days: float
    mfu: float
    flops: float
    tokens: float


class GpusForDeadline(BaseModel):
    """GPUs needed to train `token_budget` tokens within `deadline_days`."""

    token_budget: int
    deadline_days: float
    gpus_exact: float
    gpus: int = Field(description="Rounded up to whole nodes and whole model replicas.")
    nodes: int
    granularity: int = Field(description="lcm(tensor × pipeline × context, gpus_per_node).")


class Inverse(BaseModel):
    """The plan read backwards: tokens for a budget, GPUs for a deadline."""

    flops_per_token: float = Field(description="The job's average, all stages.")
    tokens_per_day: float = Field(description="At the job's world size and mfu.")
    tokens_for_budget: TokensForBudget | None
    gpus_for_deadline: GpusForDeadline | None


def answer_inverse(
    validated: ValidatedSpec,
    compute: Compute,
    *,
    gpus: int | None,
    days: float | None,
    token_budget: int | None,
    deadline_days: float | None,
) -> Inverse:
    spec, derived = validated.spec, validated.derived
    rate = achieved_flops_per_second(spec)
    per_token = compute.flops_per_token
    tokens_per_day = derived.world_size * rate * SECONDS_PER_DAY / per_token
    for_budget = None
    if gpus is not None and days is not None:
        flops = budget_flops(gpus, days, rate / 1e12)
        for_budget = TokensForBudget(
            gpus=gpus, days=days, mfu=spec.mfu, flops=flops, tokens=flops / per_token
        )
    for_deadline = None
    if deadline_days is not None:
        budget = compute.tokens if token_budget is None else token_budget
        exact = budget * per_token / (rate * deadline_days * SECONDS_PER_DAY)
        if not exact <= MAX_GPUS:  # also an infinite quotient, from a vanishing deadline
            raise SpecInvalid([_deadline_too_short(budget, deadline_days, exact)])
        parallel = spec.parallelism
        model_parallel = parallel.tensor * parallel.pipeline * parallel.context
        granularity = math.lcm(model_parallel, spec.resources.gpus_per_node)
        needed = max(granularity, math.ceil(exact / granularity) * granularity)
        for_deadline = GpusForDeadline(
            token_budget=budget,
            deadline_days=deadline_days,
            gpus_exact=exact,
            gpus=needed,
            nodes=needed // spec.resources.gpus_per_node,
            granularity=granularity,
        )
    return Inverse(
        flops_per_token=per_token,
        tokens_per_day=tokens_per_day,
        tokens_for_budget=for_budget,
        gpus_for_deadline=for_deadline,
    )


def _deadline_too_short(budget: int, deadline_days: float, exact: float) -> Problem:
    return Problem(
        loc=["deadline_days"],
        msg=f"training {budget} tokens within deadline_days {deadline_days:g} needs {exact:.3g} "
        f"GPUs, more than the {MAX_GPUS} a job can have (nodes at most {MAX_NODES} × "
        f"gpus_per_node at most {MAX_GPUS_PER_NODE}); give a longer deadline",
    )
