"""Learning-rate schedules: pure functions of the global step.

Each shape returns a multiplier of the peak lr in [0, 1]. They share one convention: step `s`
(0-based, the optimizer step about to be taken) covers the interval (s, s+1] of a continuous
schedule and takes its value at the end, s+1. So with `warmup` steps the multipliers are
1/warmup, 2/warmup, ..., 1 (step 0 trains, rather than wasting a step at lr 0), and the last
step of a decay lands exactly on `min_lr_ratio`. Phases follow the same intervals: step `s` is
in warmup while s < warmup, and in the decay from the step whose interval starts the decay.

`lr_at` turns a global step into the lr the optimizer uses: the peak `optimizer.lr`, times the
schedule over the whole run (all stages together), times the stage's `lr_scale`, times the
attempt's `lr_scale` (set by a rollback).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from trainer.config import StageConfig, TrainerConfig

Phase = Literal["warmup", "stable", "decay"]
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def warmup_stable_decay(
    step: int, *, warmup: int, stable: int, decay: int, decay_shape: str, min_lr_ratio: float
) -> float:
    """MiniCPM's WSD: linear warmup, flat at 1, then decay to `min_lr_ratio` and stay there.

    `decay` of 0 never decays: the multiplier stays 1 after warmup.
    """
    _check(step, warmup=warmup, stable=stable, decay=decay, min_lr_ratio=min_lr_ratio)
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(
            f"decay_shape must be one of {', '.join(DECAY_SHAPES)}, got {decay_shape!r}"
        )
    done = step + 1
    if done <= warmup:
        return done / warmup
    if decay == 0 or done <= warmup + stable:
        return 1.0
    progress = min((done - warmup - stable) / decay, 1.0)
    if decay_shape == "linear":
        remaining = 1.0 - progress
    elif decay_shape == "cosine":
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # 1-sqrt (Hägele et al. 2024)
        remaining = 1.0 - math.sqrt(progress)
    return min_lr_ratio + (1.0 - min_lr_ratio) * remaining


def cosine(step: int, *, warmup: int, total: int, min_lr_ratio: float) -> float:
    """Linear warmup, then a half cosine from 1 down to `min_lr_ratio` at step `total` - 1."""
    _check(step, warmup=warmup, total=total, min_lr_ratio=min_lr_ratio)
    done = step + 1
    if done <= warmup:
        return done / warmup
    if done >= total:
        return min_lr_ratio
    progress = (done - warmup) / (total - warmup)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(step: int, *, warmup: int) -> float:
    """Linear warmup, then 1."""
    _check(step, warmup=warmup)
    done = step + 1
    return done / warmup if done <= warmup else 1.0


def stage_at(step: int, config: TrainerConfig) -> tuple[int, StageConfig, int]:
    """The stage a global step falls in: (index, StageConfig, step within the stage)."""
    if step < 0:
        raise ValueError(f"step must not be negative, got {step}")
    start = 0
    for index, stage in enumerate(config.stages):
        if step < start + stage.steps:
            return index, stage, step - start
        start += stage.steps
    raise ValueError(f"step {step} is past the end of the run ({start} steps)")


def multiplier_at(step: int, config: TrainerConfig) -> float:
    """The schedule's multiplier of the peak lr at a global step, before any lr_scale."""
    schedule, total = config.schedule, config.total_steps
    ratio = config.optimizer.min_lr / config.optimizer.lr if config.optimizer.lr > 0 else 0.0
    if schedule.kind == "wsd":
        return warmup_stable_decay(
            step,
            warmup=schedule.warmup_steps,
            stable=_stable_steps(config),
            decay=schedule.decay_steps,
            decay_shape=schedule.decay_shape,
            min_lr_ratio=ratio,
        )
    if schedule.kind == "cosine":
        return cosine(step, warmup=schedule.warmup_steps, total=total, min_lr_ratio=ratio)
    if schedule.kind == "constant":
        return constant(step, warmup=schedule.warmup_steps)
    raise ValueError(f"schedule.kind must be wsd, cosine or constant, got {schedule.kind!r}")


def lr_at(step: int, config: TrainerConfig) -> float:
    """The learning rate of a global step: peak × schedule × stage lr_scale × attempt lr_scale."""
    _, stage, _ = stage_at(step, config)
    scale = stage.lr_scale * config.lr_scale
    return config.optimizer.lr * multiplier_at(step, config) * scale


def phase_at(step: int, config: TrainerConfig) -> Phase:
    """warmup, stable or decay; cosine has no stable phase and constant no decay."""
    stage_at(step, config)  # refuses steps outside the run
    schedule = config.schedule
    if step < schedule.warmup_steps:
        return "warmup"
    if schedule.kind == "cosine":
        return "decay"
    if schedule.kind == "wsd" and schedule.decay_steps > 0:
        decay_start = schedule.warmup_steps + _stable_steps(config)
        return "decay" if step >= decay_start else "stable"
    return "stable"


class LRScheduler:
    """The schedule as a component: pure, but it carries its step so every part restores alike."""

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.step = 0

    def lr(self, step: int | None = None) -> float:
        """The learning rate at `step`, or at the current step."""
        return lr_at(self.step if step is None else step, self.config)

    def phase(self, step: int | None = None) -> Phase:
        return phase_at(self.step if step is None else step, self.config)

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"step"}:
            raise ValueError(f"LRScheduler state must hold only 'step', got keys {sorted(state)}")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"LRScheduler state: step must be a non-negative int, got {step!r}")
        self.step = step


def _stable_steps(config: TrainerConfig) -> int:
    schedule, total = config.schedule, config.total_steps
    stable = total - schedule.warmup_steps - schedule.decay_steps
    if stable < 0:
        raise ValueError(
            f"schedule: warmup_steps {schedule.warmup_steps} + decay_steps "
            f"{schedule.decay_steps} exceed the run's {total} steps"
        )
    return stable


def _check(step: int, *, min_lr_ratio: float = 0.0, **lengths: int) -> None:
    if step < 0:
        raise ValueError(f"step must not be negative, got {step}")
    for name, value in lengths.items():
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    if "total" in lengths and lengths["total"] < 1:
        raise ValueError(f"total must be at least 1, got {lengths['total']}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
