"""The scaling fit: iso-FLOP groups → compute-optimal points → the laws through them."""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.scaling.benchmark import fit_benchmark
from service.scaling.isoflop import FittedGroup, fit_group, group_by_budget
from service.scaling.models import FitRefused, IsoFlopGroup, Problem, Run, ScalingFit
from service.scaling.powerlaw import fit_power_law

MIN_GROUPS = 2


def fit_scaling(runs: Sequence[Run]) -> ScalingFit:
    """N*(C) = A·C^alpha (and L*(C), the curvature, the benchmark steps) from the runs.

    FitRefused lists every group that cannot be fitted and why, or that there are too few.
    """
    grouped = group_by_budget(runs)
    if len(grouped) < MIN_GROUPS:
        raise FitRefused(
            [
                Problem(
                    loc=["runs"],
                    msg=f"{len(grouped)} iso-FLOP group{'s' if len(grouped) != 1 else ''} (FLOPs equal "
                    f"within 1%); a law through the optima needs at least {MIN_GROUPS} budgets",
                )
            ]
        )
    fitted = [fit_group(index, members) for index, members in enumerate(grouped)]
    problems = [f for f in fitted if isinstance(f, Problem)]
    if problems:
        raise FitRefused(problems)
    groups = _with_standard_errors([f for f in fitted if isinstance(f, FittedGroup)])
    budgets = [g.flops for g in groups]
    weights = (
        None
        if groups[0].log_optimal_tokens_se is None
        else [g.log_optimal_tokens_se for g in groups]
    )
    benchmark = fit_benchmark(runs, groups)
    if isinstance(benchmark, Problem):
        raise FitRefused([benchmark])
    return ScalingFit(
        optimal_tokens=fit_power_law(budgets, [g.optimal_tokens for g in groups], weights),
        loss=fit_power_law(budgets, [g.min_loss for g in groups]),
        curvature=fit_power_law(budgets, [g.parabola[0] for g in groups]),
        groups=groups,
        benchmark=benchmark,
        runs=sorted(runs, key=lambda r: (r.flops, r.tokens)),
        warnings=_warnings(groups),
    )


def _with_standard_errors(fitted: Sequence[FittedGroup]) -> list[IsoFlopGroup]:
    """The groups with the standard error of each ln N*, from the scatter pooled over groups.

    One noise level for all: a group of three or four runs says too little about its own.
    Groups that sampled fewer runs, a narrower range or off the optimum get larger errors,
    and so less weight in the law.
    """
    dof = sum(f.dof for f in fitted)
    variance = sum(f.residual_ss for f in fitted) / dof if dof else 0.0
    if variance <= 0:  # three runs a group, or exact parabolas: nothing to weigh them by
        return [f.group for f in fitted]
    return [
        f.group.model_copy(
            update={"log_optimal_tokens_se": math.sqrt(variance * f.unscaled_variance)}
        )
        for f in fitted
    ]


def _warnings(groups: Sequence[IsoFlopGroup]) -> list[str]:
    """Minima outside the tokens a group sampled: extrapolated, so less to be trusted."""
    return [
        f"group at {g.flops:.4g} FLOPs: its minimum N* = {g.optimal_tokens:.4g} tokens lies outside "
        f"the tokens it sampled ({g.tokens_range[0]:.4g} to {g.tokens_range[1]:.4g}); add runs on that side"
        for g in groups
        if not g.tokens_range[0] <= g.optimal_tokens <= g.tokens_range[1]
    ]
