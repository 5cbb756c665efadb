"""The scaling fit against sweeps drawn from known laws (scored on seeds it was never tuned
on, see synthetic.py), and its refusals."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from pydantic import ValidationError

from service.scaling import FitRefused, Run, fit_scaling
from service.scaling.isoflop import group_by_budget
from tests.service.scaling.synthetic import SCORING_SEEDS, TUNING_SEEDS, WIDE, sweep

ALPHA_TOLERANCE = 0.02
OPTIMAL_TOKENS_TOLERANCE = 0.03
SIGMOID_TOLERANCE = 0.05


def test_scoring_seeds_are_not_tuning_seeds():
    assert not set(SCORING_SEEDS) & set(TUNING_SEEDS)


def test_the_fit_recovers_alpha_and_predicts_optimal_tokens_on_scoring_sweeps():
    misses = []
    for seed in SCORING_SEEDS:
        truth, runs = sweep(seed, WIDE)
        law = fit_scaling(runs).optimal_tokens
        if abs(law.alpha / truth.alpha - 1) > ALPHA_TOLERANCE:
            misses.append(f"seed {seed}: alpha {law.alpha:.4f}, truth {truth.alpha:.4f}")
        for flops in np.geomspace(truth.flops[0], truth.flops[-1], 9):
            error = law.predict(flops) / truth.optimal_tokens(flops) - 1
            if abs(error) > OPTIMAL_TOKENS_TOLERANCE:
                misses.append(f"seed {seed}: N*({flops:.3g}) off by {error:+.2%}")
    assert misses == []


def test_the_sigmoid_parameters_are_recovered_within_5_percent_on_scoring_sweeps():
    misses = []
    for seed in SCORING_SEEDS:
        truth, runs = sweep(seed, WIDE)
        benchmark = fit_scaling(runs).benchmark
        assert benchmark is not None
        for name in ("floor", "ceiling", "slope", "midpoint"):
            fitted, true = getattr(benchmark.accuracy, name), getattr(truth, name)
            if abs(fitted / true - 1) > SIGMOID_TOLERANCE:
                misses.append(f"seed {seed}: {name} {fitted:.4g}, truth {true:.4g}")
    assert misses == []


def test_the_95_percent_interval_of_alpha_covers_the_truth_about_that_often():
    covered = 0
    for seed in SCORING_SEEDS:
        truth, runs = sweep(seed, WIDE, benchmark=False)
        low, high = fit_scaling(runs).optimal_tokens.ci95.alpha
        covered += low <= truth.alpha <= high
    assert covered >= 0.85 * len(SCORING_SEEDS)


def test_the_compute_optimal_nll_law_and_the_band_hold_the_truth_inside_the_range():
    truth, runs = sweep(SCORING_SEEDS[0], WIDE)
    fit = fit_scaling(runs)
    middle = math.sqrt(truth.flops[0] * truth.flops[-1])
    low, high = fit.optimal_tokens.interval(middle)
    assert low < fit.optimal_tokens.predict(middle) < high
    assert fit.optimal_tokens.inside(middle) and not fit.optimal_tokens.inside(truth.flops[-1] * 10)


def test_without_nll_and_accuracy_the_benchmark_is_null():
    _, runs = sweep(SCORING_SEEDS[1], WIDE, benchmark=False)
    assert fit_scaling(runs).benchmark is None


def test_expected_loss_is_the_minimum_at_the_optimum_and_rises_off_it():
    _, runs = sweep(SCORING_SEEDS[2], WIDE, benchmark=False)
    fit = fit_scaling(runs)
    flops = fit.groups[1].flops
    optimal = fit.optimal_tokens.predict(flops)
    assert fit.expected_loss(flops, optimal) == pytest.approx(fit.loss.predict(flops))
    rise = fit.expected_loss(flops, optimal * math.e) - fit.loss.predict(flops)
    assert rise == pytest.approx(fit.curvature.predict(flops))


def test_grouping_ignores_the_order_and_holds_budgets_within_1_percent():
    _, runs = sweep(SCORING_SEEDS[3], WIDE, benchmark=False)
    nudged = [
        r.model_copy(update={"flops": r.flops * (1 + 0.009 * (i % 2))}) for i, r in enumerate(runs)
    ]
    shuffled = nudged[:]
    random.Random(0).shuffle(shuffled)
    assert group_by_budget(shuffled) == group_by_budget(nudged)
    assert len(group_by_budget(nudged)) == len({r.flops for r in runs})
    apart = [Run(params=1, tokens=1, flops=f, loss=1) for f in (1e18, 1.005e18, 1.02e18)]
    assert [len(g) for g in group_by_budget(apart)] == [2, 1]


def parabola_runs(flops: float, tokens: list[float], curvature: float = 0.05) -> list[Run]:
    centre = math.log(tokens[len(tokens) // 2])
    return [
        Run(
            params=flops / (6 * d),
            tokens=d,
            flops=flops,
            loss=3 + curvature * (math.log(d) - centre) ** 2,
        )
        for d in tokens
    ]


def test_two_budgets_fit_with_null_intervals():
    runs = parabola_runs(1e18, [1e9, 2e9, 4e9]) + parabola_runs(1e19, [4e9, 8e9, 1.6e10])
    law = fit_scaling(runs).optimal_tokens
    assert law.alpha == pytest.approx(math.log10(4), rel=1e-6)
    assert law.ci95.alpha is None and law.ci95.A is None and law.interval(3e18) is None


def test_one_budget_is_refused():
    with pytest.raises(FitRefused, match="1 iso-FLOP group .* at least 2 budgets"):
        fit_scaling(parabola_runs(1e18, [1e9, 2e9, 4e9]))


def test_a_group_with_two_token_counts_is_refused_naming_it():
    runs = parabola_runs(1e18, [1e9, 2e9, 4e9]) + parabola_runs(1e19, [4e9, 8e9])
    with pytest.raises(FitRefused) as refused:
        fit_scaling(runs)
    (problem,) = refused.value.problems
    assert problem.loc == ["groups", 1]
    assert "1e+19 FLOPs" in problem.msg and "2 distinct token counts" in problem.msg


def test_a_parabola_without_a_minimum_is_refused_naming_the_group():
    runs = parabola_runs(1e18, [1e9, 2e9, 4e9], curvature=-0.05) + parabola_runs(
        1e19, [4e9, 8e9, 1.6e10]
    )
    with pytest.raises(FitRefused) as refused:
        fit_scaling(runs)
    (problem,) = refused.value.problems
    assert (
        problem.loc == ["groups", 0]
        and "opens downward" in problem.msg
        and "1e+18 FLOPs" in problem.msg
    )


def test_a_benchmark_on_some_runs_only_is_refused():
    runs = parabola_runs(1e18, [1e9, 2e9, 4e9]) + parabola_runs(1e19, [4e9, 8e9, 1.6e10])
    runs[0] = runs[0].model_copy(update={"nll": 1.0, "accuracy": 0.5})
    with pytest.raises(FitRefused, match="1 of 6 runs have nll and accuracy"):
        fit_scaling(runs)


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"loss": float("nan")}, "loss", "finite number"),
        ({"params": 0}, "params", "greater than 0"),
        ({"tokens": -5}, "tokens", "greater than 0"),
        ({"accuracy": 1.5, "nll": 1.0}, "accuracy", "less than or equal to 1"),
        ({"nll": 1.0}, None, "nll and accuracy go together"),
    ],
)
def test_a_bad_run_is_refused_naming_the_field(row, field, reason):
    with pytest.raises(ValidationError) as refused:
        Run(**{"params": 1e6, "tokens": 1e9, "flops": 6e15, "loss": 3.0, **row})
    (error,) = refused.value.errors()
    assert reason in error["msg"]
    assert error["loc"] == ((field,) if field else ())
