"""Power laws y = A·x^alpha fitted as lines in log-log space, with t-distribution intervals."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from service.scaling.models import LawCI, PowerLaw


def _line(log_x: np.ndarray, log_a: float, alpha: float) -> np.ndarray:
    return log_a + alpha * log_x


def fit_power_law(
    x: Sequence[float], y: Sequence[float], log_sigma: Sequence[float] | None = None
) -> PowerLaw:
    """ln y = ln A + alpha·ln x by (weighted) least squares with `scipy.optimize.curve_fit`.

    `log_sigma` (the standard error of each ln y, relative) weights the points; the covariance
    is scaled by the residual scatter (absolute_sigma off), so the 95% intervals from t(n − 2)
    hold whatever the weights' scale. The interval of A is exp(ln A ± t·se): A is the law's
    value at x = 1, far outside any fitted range, so it is ill-conditioned by nature; the law
    is judged by its predictions.
    """
    # SciPy loads when a fit is made, not when the service starts (seconds on a busy machine).
    from scipy import optimize, stats

    log_x, log_y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if len(log_x) < 2 or np.ptp(log_x) == 0:
        raise ValueError("a power law needs at least two distinct x values")
    start = stats.linregress(log_x, log_y)
    points = len(log_x)
    dof = points - 2
    if dof:
        sigma = None if log_sigma is None else np.asarray(log_sigma, float)
        with warnings.catch_warnings():
            # Points exactly on the line leave no covariance (handled below).
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            values, covariance = optimize.curve_fit(
                _line,
                log_x,
                log_y,
                p0=[start.intercept, start.slope],
                sigma=sigma,
                absolute_sigma=False,
            )
        log_a, alpha = (float(v) for v in values)
        if not np.isfinite(covariance).all():  # points exactly on the line: no scatter to scale by
            covariance = np.zeros((2, 2))
    else:  # two points: the line through them, and nothing left to say how far to trust it
        log_a, alpha, covariance = float(start.intercept), float(start.slope), np.zeros((2, 2))
    ci = LawCI(A=None, alpha=None)
    if dof:
        t = stats.t.ppf(0.975, dof)
        se_a, se_alpha = (math.sqrt(v) for v in np.diag(covariance))
        ci = LawCI(
            A=(math.exp(log_a - t * se_a), math.exp(log_a + t * se_a)),
            alpha=(alpha - t * se_alpha, alpha + t * se_alpha),
        )
    return PowerLaw(
        A=math.exp(log_a),
        alpha=alpha,
        ci95=ci,
        points=points,
        x_range=(float(np.min(x)), float(np.max(x))),
        r2=float(start.rvalue**2),
        dof=dof,
        log_covariance=tuple(tuple(float(v) for v in row) for row in covariance),
    )
