"""The skip-step rules on their own: which steps the trainer refuses to apply, and when it gives up."""

from __future__ import annotations

import math

import pytest

from trainer.config import FaultsConfig, TrainConfig
from trainer.faults import loss_factor, lr_factor
from trainer.step_guard import SkipReason, StepGuard, Verdict

NORMS = [1.0, 1.2, 0.9, 1.1, 1.0, 0.8, 1.2, 1.0]


def guard(**train) -> StepGuard:
    defaults = dict(skip_grad_norm_window=8, skip_grad_norm_min_history=4, max_consecutive_skips=2)
    return StepGuard(TrainConfig(**{**defaults, **train}))


def feed(g: StepGuard, norms, *, first_step: int = 0) -> list[Verdict]:
    verdicts = []
    for offset, norm in enumerate(norms):
        verdict = g.judge(loss_finite=math.isfinite(norm), grad_norm=norm)
        g.record(first_step + offset, verdict, norm, nonfinite=verdict.reason is SkipReason.NONFINITE)
        verdicts.append(verdict)
    return verdicts


def test_a_nan_loss_or_grad_norm_is_skipped_from_the_first_step():
    g = guard()
    assert g.judge(loss_finite=False, grad_norm=1.0).reason is SkipReason.NONFINITE
    assert g.judge(loss_finite=True, grad_norm=math.inf).reason is SkipReason.NONFINITE
    assert g.judge(loss_finite=True, grad_norm=math.nan).reason is SkipReason.NONFINITE
    assert g.judge(loss_finite=True, grad_norm=1.0).reason is SkipReason.NONE


def test_no_zscore_is_reported_or_applied_before_the_minimum_history():
    g = guard()
    verdicts = feed(g, [1.0, 1.1, 1.0, 50.0])
    assert [v.zscore for v in verdicts] == [None] * 4
    assert [v.reason for v in verdicts] == [SkipReason.NONE] * 4


def test_a_grad_norm_spike_over_the_zscore_is_skipped_and_kept_out_of_the_baseline():
    g = guard()
    feed(g, NORMS)
    mean = sum(NORMS) / len(NORMS)
    std = math.sqrt(sum((x - mean) ** 2 for x in NORMS) / (len(NORMS) - 1))

    (spike,) = feed(g, [mean + 7 * std])

    assert spike.reason is SkipReason.GRAD_NORM_SPIKE
    assert spike.zscore == pytest.approx(7.0)
    assert list(g.history) == NORMS  # the spike's norm is not the new normal
    assert g.skipped_total == 1
    (ordinary,) = feed(g, [mean + 5 * std])
    assert ordinary.reason is SkipReason.NONE and ordinary.zscore == pytest.approx(5.0)


def test_after_max_consecutive_skips_the_next_spike_is_trained_on():
    g = guard(max_consecutive_skips=2)
    feed(g, NORMS)
    verdicts = feed(g, [100.0, 100.0, 100.0])
    assert [v.reason for v in verdicts] == [
        SkipReason.GRAD_NORM_SPIKE,
        SkipReason.GRAD_NORM_SPIKE,
        SkipReason.NONE,
    ]
    assert verdicts[2].zscore > 6  # still a spike by the numbers: trained on by the cap
    assert g.history[-1] == 100.0 and g.spikes_in_a_row == 0


def test_a_zscore_of_zero_turns_spike_skipping_off_but_still_reports_it():
    g = guard(skip_grad_norm_zscore=0.0)
    feed(g, NORMS)
    (verdict,) = feed(g, [100.0])
    assert verdict.reason is SkipReason.NONE and verdict.zscore > 100


def test_a_flat_history_measures_a_spike_against_one_percent_of_its_mean():
    g = guard()
    feed(g, [2.0] * 8)
    (verdict,) = feed(g, [2.0 * 1.05])
    assert verdict.zscore == pytest.approx(5.0)  # 0.1 above a mean of 2, std floored at 0.02
    assert verdict.reason is SkipReason.NONE


def test_nonfinite_steps_in_a_row_diverge_naming_the_first_of_them():
    g = guard(max_nonfinite_steps=3)
    feed(g, [1.0, math.nan, 1.0], first_step=10)  # an isolated NaN is forgiven
    assert g.nonfinite_in_a_row == 0 and not g.diverged
    feed(g, [math.nan, math.nan], first_step=13)
    assert not g.diverged
    feed(g, [math.nan], first_step=15)
    assert g.diverged
    error = g.diverged_error(15)
    assert error.first_step == 13 and "steps 13-15" in str(error)
    assert g.skipped_total == 4


def test_the_metric_record_carries_the_contracted_names():
    g = guard()
    feed(g, NORMS)
    verdict = g.judge(loss_finite=True, grad_norm=100.0)
    g.record(8, verdict, 100.0, nonfinite=False)
    metrics = g.metrics(verdict, 100.0)
    assert metrics["step/skipped"] == 1.0
    assert metrics["step/skip_reason"] == 2.0
    assert metrics["step/skipped_total"] == 1.0
    assert metrics["grad_norm"] == 100.0 and metrics["grad_norm/zscore"] > 6
    nan = g.metrics(Verdict(SkipReason.NONFINITE, None), math.inf)
    assert math.isnan(nan["grad_norm"]) and "grad_norm/zscore" not in nan
    assert nan["step/skip_reason"] == 1.0


def test_the_baseline_survives_a_checkpoint_but_the_attempts_skip_count_does_not():
    g = guard()
    feed(g, NORMS + [100.0])
    restored = guard()
    restored.load_state_dict(g.state_dict())
    assert list(restored.history) == list(g.history)
    assert restored.spikes_in_a_row == 1
    assert restored.skipped_total == 0


def test_faults_are_pure_functions_of_the_step():
    faults = FaultsConfig(
        lr_blowup_from_step=5, lr_blowup_factor=100.0, nan_steps=[[2, 4]], grad_spike_steps=[[7, 8]]
    )
    assert [lr_factor(s, faults) for s in (0, 4, 5, 50)] == [1.0, 1.0, 100.0, 100.0]
    factors = [loss_factor(s, faults) for s in range(9)]
    assert [math.isnan(f) for f in factors] == [s in (2, 3) for s in range(9)]
    assert factors[7] == 1000.0 and factors[6] == factors[8] == 1.0
    assert lr_factor(10, FaultsConfig()) == 1.0 and loss_factor(10, FaultsConfig()) == 1.0
