"""Injected faults of the computation, as pure functions of the step (and a hang that waits)."""

from __future__ import annotations

from trainer import faults
from trainer.config import FaultsConfig


def test_a_hang_is_at_its_step_only():
    config = FaultsConfig(hang_at_step=5)
    assert [step for step in range(10) if faults.hangs_before(step, config)] == [5]
    assert not any(faults.hangs_before(step, FaultsConfig()) for step in range(10))


def test_a_hang_lasts_until_the_trainer_is_told_to_stop():
    asked = iter([False, False, False, True])
    faults.hang(lambda: next(asked), poll_s=0.001)
    assert next(asked, "drained") == "drained"  # it kept asking until the fourth answer said stop
