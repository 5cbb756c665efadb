"""Llama 3's two-step benchmark predictor (§3.2.1): the NLL of the correct answer as a power
law of training FLOPs, then accuracy as a sigmoid of that NLL."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from service.scaling.models import BenchmarkPredictor, IsoFlopGroup, Problem, Run, Sigmoid
from service.scaling.powerlaw import fit_power_law

SIGMOID_PARAMETERS = ("floor", "ceiling", "slope", "midpoint")
# Four parameters: fewer runs than this leave the sigmoid's scatter unestimated.
MIN_SIGMOID_POINTS = 5

NLL_FITTED_ON = (
    "the compute-optimal NLL of each iso-FLOP group (a parabola of NLL in ln tokens through the "
    "group, read at the loss optimum N*), as Llama 3 fitted its compute-optimal models: runs "
    "off the optimum at the same budget have a higher NLL, and a law through them would "
    "predict a worse model than the budget buys"
)
ACCURACY_FITTED_ON = (
    "every run with nll and accuracy: accuracy depends on the NLL alone, whatever the budget, "
    "and runs off the optimum widen the NLL range the sigmoid is pinned by"
)


def sigmoid(
    nll: np.ndarray, floor: float, ceiling: float, slope: float, midpoint: float
) -> np.ndarray:
    # Clipped so a steep slope far from the midpoint stays finite (accuracy at floor/ceiling).
    return floor + (ceiling - floor) / (1 + np.exp(np.clip(slope * (nll - midpoint), -700, 700)))


def fit_sigmoid(nll: Sequence[float], accuracy: Sequence[float]) -> Sigmoid:
    """Accuracy against NLL with `scipy.optimize.curve_fit`, bounded to what can be meant.

    floor and ceiling lie in [0, 1], the slope is positive (a lower NLL never means a lower
    accuracy), the midpoint within three NLL ranges of the data. The start is the data's own
    extremes, the median NLL and a slope that spans the NLL range.
    """
    from scipy import optimize, stats  # when fitting, not when the service starts

    x, y = np.asarray(nll, float), np.asarray(accuracy, float)
    spread = float(np.ptp(x)) or 1.0
    start = [float(y.min()), float(y.max()), 8.0 / spread, float(np.median(x))]
    lower = [0.0, 0.0, 1e-6, float(x.min()) - 3 * spread]
    upper = [1.0, 1.0, 1e4 / spread, float(x.max()) + 3 * spread]
    start = list(np.clip(start, lower, upper))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)  # no covariance: intervals null
        values, covariance = optimize.curve_fit(
            sigmoid, x, y, p0=start, bounds=(lower, upper), maxfev=20_000
        )
    floor, ceiling, slope, midpoint = (float(v) for v in values)
    dof = len(x) - len(values)
    t = stats.t.ppf(0.975, dof) if dof > 0 else math.nan
    ci: dict[str, tuple[float, float] | None] = {}
    for name, value, variance in zip(SIGMOID_PARAMETERS, values, np.diag(covariance), strict=True):
        half = t * math.sqrt(variance) if variance >= 0 else math.nan
        ci[name] = (float(value - half), float(value + half)) if math.isfinite(half) else None
    return Sigmoid(
        floor=floor,
        ceiling=ceiling,
        slope=slope,
        midpoint=midpoint,
        ci95=ci,
        points=len(x),
        nll_range=(float(x.min()), float(x.max())),
    )


def fit_benchmark(
    runs: Sequence[Run], groups: Sequence[IsoFlopGroup]
) -> BenchmarkPredictor | Problem | None:
    """The two steps when every run has nll and accuracy; None when none has; else a Problem."""
    scored = [r for r in runs if r.nll is not None]
    if not scored:
        return None
    if len(scored) < len(runs):
        return Problem(
            loc=["runs"],
            msg=f"{len(scored)} of {len(runs)} runs have nll and accuracy: give them for every run or none",
        )
    if len(scored) < MIN_SIGMOID_POINTS:
        return Problem(
            loc=["runs"],
            msg=f"the accuracy sigmoid has 4 parameters: it needs at least {MIN_SIGMOID_POINTS} runs",
        )
    optimal = [(g.flops, g.optimal_nll) for g in groups if g.optimal_nll is not None]
    if len(optimal) < 2:
        return Problem(
            loc=["runs"],
            msg="the NLL law needs a positive compute-optimal NLL in at least 2 iso-FLOP groups",
        )
    return BenchmarkPredictor(
        nll=fit_power_law([f for f, _ in optimal], [n for _, n in optimal]),
        accuracy=fit_sigmoid([r.nll for r in scored], [r.accuracy for r in scored]),
        nll_fitted_on=NLL_FITTED_ON,
        accuracy_fitted_on=ACCURACY_FITTED_ON,
    )
