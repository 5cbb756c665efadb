"""What a saved law says of a planned job: the compute-optimal tokens for its budget, the loss
it should reach and, with the benchmark steps, the accuracy to expect."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from service.scaling.models import Interval, ScalingFit


class ScalingPrediction(BaseModel):
    """The plan's `scaling` block, beside its 6ND figures."""

    fit_id: int = Field(description="The saved fit used (GET /v1/scaling/fits/current).")
    fitted_at: datetime
    flops: float = Field(description="C = 6·N·D of the spec: the planner's compute.flops_6nd.")
    tokens: int = Field(description="D: tokens the spec trains.")
    optimal_tokens: float = Field(
        description="N*(C) = A·C^alpha: compute-optimal tokens for this budget."
    )
    optimal_tokens_ci95: Interval | None = Field(
        description="95% interval of N*(C); null for a law through 2 budgets."
    )
    optimal_params: float = Field(description="C / (6·N*(C)): the compute-optimal model size.")
    tokens_vs_optimal: float = Field(
        description="D / N*(C): above 1, more tokens on a smaller model than optimal."
    )
    optimal_loss: float = Field(
        description="L*(C): the loss a compute-optimal run of this budget reaches."
    )
    expected_loss: float = Field(
        description="The spec's expected final held-out loss: L*(C) + a(C)·ln(D / N*(C))², the parabola's rise off the optimum."
    )
    expected_nll: float | None = Field(
        description="Benchmark NLL*(C) of a compute-optimal model; null without the benchmark part."
    )
    expected_accuracy: float | None = Field(
        description="Benchmark accuracy at expected_nll (the sigmoid): a compute-optimal model of this budget; null without the benchmark part."
    )
    extrapolated: bool = Field(description="C lies outside the budgets the law was fitted on.")
    notes: list[str]


def predict(
    fit: ScalingFit, *, flops: float, tokens: int, fit_id: int, fitted_at: datetime
) -> ScalingPrediction:
    """The law's figures for a budget of `flops` spent on `tokens`."""
    law = fit.optimal_tokens
    optimal = law.predict(flops)
    nll = fit.benchmark.nll.predict(flops) if fit.benchmark else None
    notes = []
    extrapolated = not law.inside(flops)
    if extrapolated:
        low, high = law.x_range
        notes.append(
            f"C = {flops:.3g} FLOPs lies outside the fitted budgets ({low:.3g} to {high:.3g}): "
            "the law is extrapolated, its interval widens and its figures are less certain"
        )
    if fit.benchmark:
        notes.append(
            "expected_accuracy is that of a compute-optimal model of this budget, not of this split of N and D"
        )
    return ScalingPrediction(
        fit_id=fit_id,
        fitted_at=fitted_at,
        flops=flops,
        tokens=tokens,
        optimal_tokens=optimal,
        optimal_tokens_ci95=law.interval(flops),
        optimal_params=flops / (6 * optimal),
        tokens_vs_optimal=tokens / optimal,
        optimal_loss=fit.loss.predict(flops),
        expected_loss=fit.expected_loss(flops, tokens),
        expected_nll=nll,
        expected_accuracy=fit.benchmark.accuracy.accuracy(nll)
        if fit.benchmark and nll is not None
        else None,
        extrapolated=extrapolated,
        notes=notes,
    )
