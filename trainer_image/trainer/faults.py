"""Injected faults, pure functions of the step: what tests, demos and the detector's set train on.

Bad data lives with the data (`corrupt` windows of a source); these are faults of the
computation itself, the same on every rank:
  * an LR blow-up: from `lr_blowup_from_step` on, the learning rate × `lr_blowup_factor`
    (the run diverges);
  * NaN steps: the loss of a step in `nan_steps` is multiplied by NaN before backward, so
    its loss and every gradient are non-finite (the skip-step path, then the diverged outcome);
  * gradient spikes: the loss of a step in `grad_spike_steps` is multiplied by
    `grad_spike_factor` before backward (its gradients, not its reported loss).
"""

from __future__ import annotations

import math

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


def _within(step: int, ranges: list[list[int]]) -> bool:
    return any(start <= step < end for start, end in ranges)
