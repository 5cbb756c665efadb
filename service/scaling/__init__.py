"""Scaling laws from small runs, as Llama 3 sized its flagship: iso-FLOP groups, the
compute-optimal token count N*(C) = A·C^alpha, the loss at it, and the two-step benchmark
predictor. Pure fitting with SciPy; `runs` reads finished jobs and `laws` stores fits."""

from service.scaling.fit import fit_scaling
from service.scaling.models import FitRefused, Problem, Run, ScalingFit

__all__ = ["FitRefused", "Problem", "Run", "ScalingFit", "fit_scaling"]
