"""Injected faults, pure functions of the step: what tests, demos and the detector's set train on.

Bad data lives with the data (`corrupt` windows of a source); these are faults of the
computation itself, the same on every rank:
  * an LR blow-up: from `lr_blowup_from_step` on, the learning rate × `lr_blowup_factor`
    (the run diverges);
  * NaN steps: the loss of a step in `nan_steps` is multiplied by NaN before backward, so
    its loss and every gradient are non-finite (the skip-step path, then the diverged outcome);
  * gradient spikes: the loss of a step in `grad_spike_steps` is multiplied by
    `grad_spike_factor` before backward (its gradients, not its reported loss);
  * a hang: before step `hang_at_step` the trainer sleeps until it is told to stop, as a rank
    stuck in a collective does (no steps, no metrics, no exit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from trainer.config import FaultsConfig


def lr_factor(step: int, faults: FaultsConfig) -> float:
    """Multiplier on the scheduled learning rate at `step`."""
    start = faults.lr_blowup_from_step
    return faults.lr_blowup_factor if start is not None and step >= start else 1.0


def loss_factor(step: int, faults: FaultsConfig) -> float:
    """Multiplier on the loss that is backpropagated at `step` (1.0: untouched)."""
    if _within(step, faults.nan_steps):
        return math.nan
    if _within(step, faults.grad_spike_steps):
        return faults.grad_spike_factor
    return 1.0


def hangs_before(step: int, faults: FaultsConfig) -> bool:
    """Whether the trainer hangs before training `step`."""
    return faults.hang_at_step is not None and step == faults.hang_at_step


def hang(stop_requested: Callable[[], bool], *, poll_s: float = 0.2) -> None:
    """Sleep until `stop_requested()`: no step, no collective, no lock held; SIGKILL ends it too."""
    while not stop_requested():
        time.sleep(poll_s)


def _within(step: int, ranges: list[list[int]]) -> bool:
    return any(start <= step < end for start, end in ranges)
