"""The scaling fit's wire and storage shapes: runs in; iso-FLOP groups, power laws and the
benchmark predictor out. Each law carries what its confidence band needs, so a stored fit
predicts (with its interval) without the runs it came from."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Interval = tuple[float, float]


class Run(BaseModel):
    """One finished training run: its size, what it trained on, and how good it got."""

    model_config = ConfigDict(extra="forbid")

    params: Positive = Field(description="Parameters N (the planner's count for the 6ND figure).")
    tokens: Positive = Field(description="Tokens trained D.")
    flops: Positive = Field(
        description="Training compute C, FLOPs (6·N·D, or the planner's figure)."
    )
    loss: Positive = Field(description="Final held-out loss (nats per token).")
    nll: Positive | None = Field(
        None, description="Benchmark NLL of the correct answer (nats), with `accuracy`."
    )
    accuracy: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = Field(
        None, description="Benchmark accuracy in [0, 1], with `nll`."
    )
    job_id: int | None = Field(
        None, description="The finished job it was read from; null for a CSV row."
    )

    @model_validator(mode="after")
    def _benchmark_pair(self) -> Run:
        if (self.nll is None) != (self.accuracy is None):
            raise ValueError("nll and accuracy go together: give both or neither")
        return self


class Problem(BaseModel):
    """Why the fit was refused: where (a group, a field) and what is wrong there."""

    loc: list[str | int]
    msg: str


class FitRefused(ValueError):
    """The runs cannot be fitted; `problems` says where and why, one per cause."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems))
        self.problems = problems


class LawCI(BaseModel):
    """95% confidence intervals of a power law's parameters (t distribution, n − 2 dof);
    null with two points, which leave no degree of freedom to estimate the scatter."""

    A: Interval | None
    alpha: Interval | None


class PowerLaw(BaseModel):
    """y = A·x^alpha, fitted as a line in log-log space.

    `log_covariance` is that of (ln A, alpha) and `dof` the degrees of freedom of its t
    intervals: the 95% interval of the fitted mean at x is exp(ln ŷ ± t·√(v)), with
    v = [1, ln x]·Σ·[1, ln x]ᵀ.
    """

    A: float
    alpha: float
    ci95: LawCI
    points: int = Field(description="Points fitted (one per iso-FLOP group).")
    x_range: Interval = Field(
        description="The smallest and largest x fitted: predictions outside extrapolate."
    )
    r2: float = Field(description="Coefficient of determination in log space (unweighted).")
    dof: int = Field(description="points − 2.")
    log_covariance: tuple[tuple[float, float], tuple[float, float]] = Field(
        description="Covariance of (ln A, alpha), scaled by the residual scatter."
    )

    def predict(self, x: float) -> float:
        return self.A * x**self.alpha

    def interval(self, x: float) -> Interval | None:
        """95% interval of the fitted mean at x; None with two points."""
        if self.dof < 1:
            return None
        from scipy import stats  # here, not at import: every service process loads these models

        (var_a, cov), (_, var_alpha) = self.log_covariance
        log_x = math.log(x)
        variance = max(var_a + 2 * cov * log_x + var_alpha * log_x**2, 0.0)
        half = stats.t.ppf(0.975, self.dof) * math.sqrt(variance)
        centre = math.log(self.predict(x))
        return (math.exp(centre - half), math.exp(centre + half))

    def inside(self, x: float) -> bool:
        low, high = self.x_range
        return low * (1 - 1e-9) <= x <= high * (1 + 1e-9)


class IsoFlopGroup(BaseModel):
    """Runs of one compute budget and the parabola of loss in ln(tokens) through them."""

    flops: float = Field(description="The group's budget: the geometric mean of its runs' FLOPs.")
    runs: int
    tokens_range: Interval
    parabola: tuple[float, float, float] = Field(
        description="(a, b, c) of loss = a·x² + b·x + c with x = ln(tokens); a > 0."
    )
    optimal_tokens: float = Field(description="N*: the parabola's minimum, exp(−b / 2a).")
    optimal_params: float = Field(description="C / (6·N*).")
    min_loss: float = Field(description="L*: the parabola's value at its minimum.")
    log_optimal_tokens_se: float | None = Field(
        None,
        description="Standard error of ln N* (delta method, the groups' pooled scatter); it weights "
        "the group in the law. Null when no group has a run beyond the parabola's three.",
    )
    optimal_nll: float | None = Field(
        None,
        description="The benchmark NLL at N* (a parabola of NLL in ln tokens through the group).",
    )


class Sigmoid(BaseModel):
    """accuracy = floor + (ceiling − floor) / (1 + exp(slope·(nll − midpoint)))."""

    floor: float
    ceiling: float
    slope: float = Field(description="> 0: accuracy falls as the NLL rises.")
    midpoint: float = Field(description="The NLL halfway between floor and ceiling.")
    ci95: dict[str, Interval | None] = Field(
        description="Per parameter, from curve_fit's covariance and the t distribution (n − 4 dof)."
    )
    points: int
    nll_range: Interval

    def accuracy(self, nll: float) -> float:
        exponent = min(self.slope * (nll - self.midpoint), 700.0)
        return self.floor + (self.ceiling - self.floor) / (1 + math.exp(exponent))


class BenchmarkPredictor(BaseModel):
    """Llama 3's two steps: NLL of the correct answer from FLOPs, then accuracy from NLL."""

    nll: PowerLaw = Field(
        description="NLL*(C): the compute-optimal NLL of each group against its budget."
    )
    accuracy: Sigmoid = Field(description="Accuracy against NLL, over every run with both.")
    nll_fitted_on: str
    accuracy_fitted_on: str


class ScalingFit(BaseModel):
    """Everything the fit found; `optimal_tokens` is the law N*(C) = A·C^alpha."""

    optimal_tokens: PowerLaw
    loss: PowerLaw = Field(description="L*(C): the groups' minimum loss against their budget.")
    curvature: PowerLaw = Field(
        description="a(C): the parabolas' curvature against the budget, for the loss of a run off the optimum."
    )
    groups: list[IsoFlopGroup]
    benchmark: BenchmarkPredictor | None
    runs: list[Run]
    warnings: list[str]

    def expected_loss(self, flops: float, tokens: float) -> float:
        """L*(C) plus the parabola's rise for training `tokens` instead of N*(C)."""
        offset = math.log(tokens / self.optimal_tokens.predict(flops))
        return self.loss.predict(flops) + self.curvature.predict(flops) * offset**2
