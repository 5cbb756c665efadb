"""Synthetic iso-FLOP sweeps drawn from known laws, for scoring the scaling fit.

A sweep has budgets C spread over decades; at each, runs at tokens D = N*(C)·e^x for offsets
x around the optimum (the grid is not centred on it: a real sweep does not know where N* is),
params = C / 6D, and

    loss = L*(C) + k(C)·x² + ε,   N*(C) = A·C^alpha,   L*(C) = B·C^beta,   k(C) = K·C^kappa
    nll  = a·C^b + k_nll·x² + ε,   accuracy = floor + (ceiling − floor) / (1 + e^(slope·(nll − midpoint))) + ε

`TUNING` is the narrow range the fit was developed on (its grouping tolerance, the parabola,
the sigmoid's bounds and start); `WIDE` is wider in every direction: alpha over [0.4, 0.7], A
over three decades, 3 to 6 budgets of 6 to 9 runs, grids off centre, noise and curvature
each over a range, sigmoids of other floors, ceilings, slopes and midpoints.
`TUNING_SEEDS` were used while developing; the tests score on `SCORING_SEEDS` only, which
never overlap them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.scaling import Run

TUNING_SEEDS = range(0, 20)
SCORING_SEEDS = range(1000, 1040)


@dataclass(frozen=True)
class Ranges:
    """Bounds each sweep parameter is drawn from (uniformly; log-uniformly for A)."""

    alpha: tuple[float, float]
    log10_A: tuple[float, float]
    groups: tuple[int, int]
    runs: tuple[int, int]
    decades: tuple[float, float]  # the span of the budgets
    spread: tuple[float, float]  # the grid's half-width in ln(tokens)
    off_centre: tuple[float, float]  # the grid's centre minus ln N*, as a share of the spread
    curvature: tuple[float, float]  # k at the smallest budget
    noise: tuple[float, float]  # the loss noise's sd, as a share of the curvature
    accuracy_noise: tuple[float, float]


TUNING = Ranges(
    alpha=(0.5, 0.56), log10_A=(-0.7, -0.3), groups=(4, 4), runs=(7, 7), decades=(2.5, 2.5),
    spread=(1.2, 1.2), off_centre=(0.0, 0.0), curvature=(0.06, 0.06), noise=(0.03, 0.03),
    accuracy_noise=(0.004, 0.004),
)  # fmt: skip
WIDE = Ranges(
    alpha=(0.4, 0.7), log10_A=(-2.0, 1.0), groups=(3, 6), runs=(6, 9), decades=(2.0, 3.5),
    spread=(1.0, 1.6), off_centre=(-0.25, 0.25), curvature=(0.03, 0.12), noise=(0.01, 0.05),
    accuracy_noise=(0.002, 0.006),
)  # fmt: skip


@dataclass(frozen=True)
class Truth:
    """The laws a sweep was drawn from."""

    A: float
    alpha: float
    flops: tuple[float, ...]
    floor: float
    ceiling: float
    slope: float
    midpoint: float

    def optimal_tokens(self, flops: float) -> float:
        return self.A * flops**self.alpha


def sweep(seed: int, ranges: Ranges = WIDE, *, benchmark: bool = True) -> tuple[Truth, list[Run]]:
    """One sweep drawn with `seed` from `ranges`, and the laws it was drawn from."""
    rng = np.random.default_rng(seed)

    def draw(bounds: tuple[float, float]) -> float:
        return float(rng.uniform(*bounds))

    alpha, A = draw(ranges.alpha), 10 ** draw(ranges.log10_A)
    groups = int(rng.integers(ranges.groups[0], ranges.groups[1] + 1))
    low = draw((17.0, 19.0))
    flops = tuple(10 ** float(e) for e in np.linspace(low, low + draw(ranges.decades), groups))
    B, beta = draw((8.0, 20.0)), -draw((0.03, 0.06))
    K, kappa = draw(ranges.curvature) / flops[0] ** -0.02, -0.02
    a_nll, b_nll = draw((3.0, 6.0)), -draw((0.03, 0.06))
    k_nll = draw((0.3, 1.0)) * K
    rows = []
    for budget in flops:
        optimal = A * budget**alpha
        curvature = K * budget**kappa
        spread = draw(ranges.spread)
        centre = draw(ranges.off_centre) * spread
        count = int(rng.integers(ranges.runs[0], ranges.runs[1] + 1))
        for x in np.linspace(centre - spread, centre + spread, count):
            tokens = optimal * math.exp(x)
            loss = (
                B * budget**beta + curvature * x**2 + rng.normal(0, draw(ranges.noise) * curvature)
            )
            nll = a_nll * budget**b_nll + k_nll * budget**kappa * x**2
            rows.append((budget, tokens, loss, nll))
    nlls = np.array([r[3] for r in rows])
    span = float(np.ptp(nlls))
    floor, ceiling = draw((0.2, 0.35)), draw((0.65, 0.9))
    midpoint = float(nlls.min()) + draw((0.35, 0.65)) * span
    slope = draw((10.0, 16.0)) / span
    truth = Truth(
        A=A, alpha=alpha, flops=flops, floor=floor, ceiling=ceiling, slope=slope, midpoint=midpoint
    )
    noise = draw(ranges.accuracy_noise)
    runs = []
    for budget, tokens, loss, nll in rows:
        extra = {}
        if benchmark:
            accuracy = floor + (ceiling - floor) / (1 + math.exp(slope * (nll - midpoint)))
            extra = {"nll": nll, "accuracy": float(np.clip(accuracy + rng.normal(0, noise), 0, 1))}
        runs.append(
            Run(params=budget / (6 * tokens), tokens=tokens, flops=budget, loss=loss, **extra)
        )
    return truth, runs
