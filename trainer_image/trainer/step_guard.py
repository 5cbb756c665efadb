"""The trainer as first line of defence: skip a bad optimizer step instead of taking it.

As Megatron's rerun machine and OLMo-core's skip-step optimizer do, one bad batch costs one
step, not a rollback. A step is skipped (no weight or optimizer-state change) when

  1. its loss or gradient norm is not finite (fp16: the loss scaler found an overflow), or
  2. its gradient norm, measured before clipping, is more than `skip_grad_norm_zscore`
     standard deviations above the mean of the last `skip_grad_norm_window` updated steps,
     once `skip_grad_norm_min_history` of them are known. After `max_consecutive_skips`
     such skips in a row the next spike is trained on: a sustained shift is the watchdog's
     business, not a reason to skip forever.

`max_nonfinite_steps` non-finite steps in a row end the run as diverged (`DivergedError`).
`optimizer_step` splits megatron-core's `optimizer.step()` into its parts so the norm is
measured once, judged, and only then clipped and applied.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch
import torch.distributed as dist
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

from trainer import parallel
from trainer.config import TrainConfig

# A perfectly flat history has no spread; a spike is then measured against 1% of its mean.
RELATIVE_STD_FLOOR = 1e-2


class SkipReason(IntEnum):
    """`step/skip_reason` in the metric record (a contract with the service)."""

    NONE = 0
    NONFINITE = 1
    GRAD_NORM_SPIKE = 2


class DivergedError(RuntimeError):
    """The loss stayed non-finite for `max_nonfinite_steps` steps in a row."""

    def __init__(self, first_step: int, message: str) -> None:
        super().__init__(message)
        self.first_step = first_step


@dataclass(frozen=True)
class Verdict:
    reason: SkipReason
    zscore: float | None

    @property
    def skipped(self) -> bool:
        return self.reason is not SkipReason.NONE


class StepGuard:
    """Decides which steps to skip, from the loss, the gradient norm and recent norms."""

    def __init__(self, train: TrainConfig) -> None:
        self.threshold = train.skip_grad_norm_zscore
        self.min_history = train.skip_grad_norm_min_history
        self.max_consecutive_skips = train.max_consecutive_skips
        self.max_nonfinite_steps = train.max_nonfinite_steps
        self.history: deque[float] = deque(maxlen=train.skip_grad_norm_window)
        self.spikes_in_a_row = 0
        self.skipped_total = 0  # this attempt's, so not part of the state a checkpoint keeps
        self.nonfinite_in_a_row = 0
        self.nonfinite_since: int | None = None

    def zscore(self, grad_norm: float) -> float | None:
        """How far above the recent norms `grad_norm` lies; None until the window is full enough."""
        if len(self.history) < self.min_history or not math.isfinite(grad_norm):
            return None
        mean = math.fsum(self.history) / len(self.history)
        variance = math.fsum((x - mean) ** 2 for x in self.history) / (len(self.history) - 1)
        std = max(math.sqrt(variance), RELATIVE_STD_FLOOR * abs(mean), 1e-12)
        return (grad_norm - mean) / std

    def judge(self, *, loss_finite: bool, grad_norm: float) -> Verdict:
        """The verdict on one step; changes nothing (see `record`)."""
        zscore = self.zscore(grad_norm)
        if not (loss_finite and math.isfinite(grad_norm)):
            return Verdict(SkipReason.NONFINITE, None)
        if (
            self.threshold > 0
            and zscore is not None
            and zscore > self.threshold
            and self.spikes_in_a_row < self.max_consecutive_skips
        ):
            return Verdict(SkipReason.GRAD_NORM_SPIKE, zscore)
        return Verdict(SkipReason.NONE, zscore)

    def record(self, step: int, verdict: Verdict, grad_norm: float, *, nonfinite: bool) -> None:
        """Account for the step as judged (after every rank agreed on the verdict).

        `nonfinite` says whether the step counts toward divergence: an fp16 overflow the loss
        scaler can still back off from is skipped but does not.
        """
        if verdict.skipped:
            self.skipped_total += 1
        if verdict.reason is SkipReason.GRAD_NORM_SPIKE:
            self.spikes_in_a_row += 1
        elif verdict.reason is SkipReason.NONE:
            self.spikes_in_a_row = 0
            self.history.append(grad_norm)
        if nonfinite:
            if self.nonfinite_in_a_row == 0:
                self.nonfinite_since = step
            self.nonfinite_in_a_row += 1
        else:
            self.nonfinite_in_a_row = 0
            self.nonfinite_since = None

    @property
    def diverged(self) -> bool:
        return self.nonfinite_in_a_row >= self.max_nonfinite_steps

    def diverged_error(self, step: int) -> DivergedError:
        first = self.nonfinite_since if self.nonfinite_since is not None else step
        return DivergedError(
            first,
            f"loss or gradient norm not finite for {self.nonfinite_in_a_row} steps in a row, "
            f"steps {first}-{step}",
        )

    def metrics(self, verdict: Verdict, grad_norm: float) -> dict[str, float]:
        """The step's record entries (names are a contract with the service)."""
        metrics = {
            "step/skipped": float(verdict.skipped),
            "step/skip_reason": float(verdict.reason),
            "step/skipped_total": float(self.skipped_total),
            "grad_norm": grad_norm if math.isfinite(grad_norm) else math.nan,
        }
        if verdict.zscore is not None:
            metrics["grad_norm/zscore"] = verdict.zscore
        return metrics

    # What a rollback restores: the baseline the next z-scores are measured against.
    def state_dict(self) -> dict[str, Any]:
        # Plain floats: a checkpoint's counters load with `weights_only` (checkpoint.py).
        return {
            "history": [float(x) for x in self.history],
            "spikes_in_a_row": int(self.spikes_in_a_row),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        self.history.extend(float(x) for x in state["history"])
        self.spikes_in_a_row = int(state["spikes_in_a_row"])


def optimizer_step(optimizer, guard: StepGuard, *, loss_finite: bool) -> tuple[Verdict, float]:
    """megatron-core's `optimizer.step()`, with the guard's verdict between measuring and applying.

    The same parts in the same order as `ChainedOptimizer.step` (so the numerics are its own):
    `prepare_grads` (fp16: unscale, find overflows, update the loss scale), one
    `get_grad_norm` (all-reduced over the grad-stats group: model parallel, or the world with
    the distributed optimizer), clip by that norm, `step_with_ready_grads` (the distributed
    optimizer all-gathers its updated shards there). A skipped step stops before the clip.
    """
    found_inf = optimizer.prepare_grads()
    grad_norm = math.nan if found_inf else float(optimizer.get_grad_norm())
    verdict = _agreed(guard.judge(loss_finite=loss_finite, grad_norm=grad_norm))
    if verdict.skipped:
        return verdict, grad_norm
    for part in getattr(optimizer, "chained_optimizers", [optimizer]):
        if getattr(part, "is_stub_optimizer", False) or part.config.clip_grad <= 0:
            continue
        if params := part.get_parameters():
            clip_grad_by_total_norm_fp32(
                params,
                max_norm=part.config.clip_grad,
                total_norm=grad_norm,
                use_decoupled_grad=part.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8,
            )
    optimizer.step_with_ready_grads()
    return verdict, grad_norm


def _agreed(verdict: Verdict) -> Verdict:
    """The strictest verdict of any rank: a rank that skips alone would leave the others behind."""
    reason = torch.tensor([int(verdict.reason)], dtype=torch.int32, device=parallel.device())
    dist.all_reduce(reason, op=dist.ReduceOp.MAX)
    agreed = SkipReason(int(reason.item()))
    return verdict if agreed is verdict.reason else Verdict(agreed, verdict.zscore)
