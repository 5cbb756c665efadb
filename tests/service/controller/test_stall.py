"""The stall timeout, as a table: the spec's, else a multiple of the step time, bounded below."""

from __future__ import annotations

import pytest

from service.controller.reconcile import Progress
from service.controller.stall import STEP_TIME_MULTIPLE, stall_timeout_s


@pytest.mark.parametrize(
    ("spec", "median", "first_step", "expected"),
    [
        (30.0, 100.0, False, 30.0),  # the spec's word wins, even below the step-time multiple
        (None, 100.0, False, STEP_TIME_MULTIPLE * 100.0),
        (None, 2.0, False, 120.0),  # ten 2-second steps are below the floor
        (None, None, False, 120.0),  # no step measured yet: the floor
        (None, 0.1, False, 120.0),
        (30.0, 2.0, True, 900.0),  # before the first step, start-up gets its allowance
        (None, 200.0, True, 2000.0),
    ],
)
def test_the_stall_timeout(spec, median, first_step, expected):
    got = stall_timeout_s(
        spec_timeout_s=spec, median_step_s=median, floor_s=120.0, grace_s=60.0,
        first_step=first_step, startup_s=900.0,
    )  # fmt: skip
    assert got == pytest.approx(expected)


def test_the_grace_period_bounds_the_default_timeout_below_since_a_save_sends_no_steps():
    got = stall_timeout_s(
        spec_timeout_s=None, median_step_s=1.0, floor_s=120.0, grace_s=600.0, first_step=False, startup_s=1.0
    )
    assert got == 600.0


def test_a_run_is_stalled_once_it_has_been_idle_for_its_timeout():
    assert not Progress(last_step=3, idle_s=29.9, timeout_s=30.0).stalled
    assert Progress(last_step=3, idle_s=30.0, timeout_s=30.0).stalled
