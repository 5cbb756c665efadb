"""Iso-FLOP groups: runs of one compute budget, and the parabola of loss in ln(tokens)
through each, whose minimum is the budget's compute-optimal token count (Llama 3, §3.2.1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from service.scaling.models import IsoFlopGroup, Problem, Run

# Runs whose FLOPs differ by less than this (relative to the group's smallest) share a budget.
SAME_BUDGET = 0.01
# A parabola needs three distinct points; fewer leave its minimum undetermined.
MIN_DISTINCT_TOKENS = 3


def group_by_budget(runs: Sequence[Run], tolerance: float = SAME_BUDGET) -> list[list[Run]]:
    """Runs grouped by FLOPs equal within `tolerance`, smallest budget first.

    Sorted first, so the grouping does not depend on the order the runs came in; a group
    starts at its smallest run and takes every run within `tolerance` of it, so a chain of
    runs each 0.9% above the last cannot stretch one group across budgets.
    """
    groups: list[list[Run]] = []
    for run in sorted(runs, key=lambda r: (r.flops, r.tokens)):
        if groups and run.flops <= groups[-1][0].flops * (1 + tolerance):
            groups[-1].append(run)
        else:
            groups.append([run])
    return groups


class FittedGroup(NamedTuple):
    """A group's fit, with what pooling the groups' scatter needs."""

    group: IsoFlopGroup
    residual_ss: float  # Σ (loss − parabola)²
    dof: int  # runs − 3
    unscaled_variance: float  # var(ln N*) per unit of loss variance (delta method)


def fit_group(index: int, runs: Sequence[Run]) -> FittedGroup | Problem:
    """The group's parabola and its minimum, or the Problem that refuses it."""
    flops = math.exp(float(np.mean(np.log([r.flops for r in runs]))))
    where = ["groups", index]
    named = f"the iso-FLOP group at {flops:.4g} FLOPs ({len(runs)} runs)"
    distinct = len({r.tokens for r in runs})
    if distinct < MIN_DISTINCT_TOKENS:
        return Problem(
            loc=where,
            msg=f"{named} has {distinct} distinct token count{'s' if distinct != 1 else ''}; a "
            f"parabola needs at least {MIN_DISTINCT_TOKENS} (FLOPs are one budget within "
            f"{SAME_BUDGET:.0%})",
        )
    x = np.log([r.tokens for r in runs])
    loss = np.array([r.loss for r in runs])
    a, b, c = (float(v) for v in np.polyfit(x, loss, 2))
    if not a > 0:
        return Problem(
            loc=where,
            msg=f"{named}: the parabola of loss in ln(tokens) opens downward (a = {a:.3g}), so it "
            "has no minimum; the runs do not bracket the optimum, or noise hides it",
        )
    best = -b / (2 * a)
    optimal_tokens = math.exp(best)
    nll = _nll_at(runs, x, best)
    group = IsoFlopGroup(
        flops=flops,
        runs=len(runs),
        tokens_range=(min(r.tokens for r in runs), max(r.tokens for r in runs)),
        parabola=(a, b, c),
        optimal_tokens=optimal_tokens,
        optimal_params=flops / (6 * optimal_tokens),
        min_loss=c - b * b / (4 * a),
        optimal_nll=nll,
    )
    residuals = loss - np.polyval((a, b, c), x)
    return FittedGroup(
        group, float(residuals @ residuals), len(runs) - 3, _unscaled_variance(x, a, b)
    )


def _unscaled_variance(x: np.ndarray, a: float, b: float) -> float:
    """var(−b / 2a) per unit of noise variance: gᵀ (XᵀX)⁻¹ g with g = ∂(−b/2a)/∂(a, b, c)."""
    design = np.vander(x, 3)
    gradient = np.array([b / (2 * a * a), -1 / (2 * a), 0.0])
    return float(gradient @ np.linalg.pinv(design.T @ design) @ gradient)


def _nll_at(runs: Sequence[Run], x: np.ndarray, best: float) -> float | None:
    """The group's benchmark NLL at the loss optimum: a parabola of NLL in ln(tokens) there.

    None when a run of the group lacks the benchmark, or its NLL there is not positive.
    """
    if any(r.nll is None for r in runs):
        return None
    value = float(np.polyval(np.polyfit(x, [r.nll for r in runs], 2), best))
    return value if value > 0 else None
