"""What runs beside training: checkpoints, held-out evaluation and the loss watchdog."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.spec.fields import (
    MAX_GLOBAL_BATCH_SIZE,
    MAX_STEPS,
    NonNegativeSteps,
    PositiveFloat,
    PositiveSteps,
    Section,
    SpecPath,
    integer,
    real,
)

# A week without a step is no longer a stall to wait out: it is a typo.
MAX_STALL_TIMEOUT_S = 7 * 86_400.0


class CheckpointSpec(Section):
    """When and where checkpoints are written."""

    interval_steps: PositiveSteps = Field(1000, description="Steps between checkpoints.")
    keep_last: PositiveSteps = Field(
        3, description="Newest checkpoints kept; older ones are deleted."
    )
    storage: SpecPath | None = Field(
        None,
        description="Directory under an allowed root (relative: under the checkpoint root) or "
        "URI (s3://) for checkpoints; unset = the service's default.",
    )


class EvalSpec(Section):
    """Held-out evaluation, reported per channel as loss and perplexity."""

    interval_steps: PositiveSteps = Field(1000, description="Steps between evaluations.")
    samples_per_channel: integer(gt=0, le=MAX_GLOBAL_BATCH_SIZE) = Field(
        200, description="Held-out sequences evaluated per channel."
    )


class WatchdogSpec(Section):
    """How the watchdog judges the loss curve and what it does about an anomaly."""

    spike_threshold: PositiveFloat = Field(
        0.15,
        description="Relative rise of a channel's loss over its recent level that counts as a spike.",
    )
    drop_threshold: PositiveFloat = Field(
        0.25, description="Relative fall of a channel's loss that counts as a suspicious drop."
    )
    recover_window_steps: PositiveSteps = Field(
        20, description="Steps a spike may take to recover before it becomes a rollback."
    )
    rollback: Literal["auto", "alert_only"] = Field(
        "auto", description="auto rolls back by itself; alert_only only raises an event."
    )
    rollback_margin_steps: NonNegativeSteps = Field(
        100, description="Healthy steps required between the checkpoint restored and the anomaly."
    )
    skip_steps_after: NonNegativeSteps = Field(
        200,
        description="Steps of data skipped after the restored checkpoint, past the offending batches.",
    )
    max_rollbacks: PositiveSteps = Field(
        3,
        description="Rollbacks allowed within rollback_window_steps before the job pauses and pages.",
    )
    rollback_window_steps: PositiveSteps = Field(
        2000, description="Window over which rollbacks are counted."
    )
    lr_scale_on_rollback: PositiveFloat = Field(
        1.0, description="Multiplier on the learning rate after each rollback."
    )
    skip_grad_norm_zscore: PositiveFloat = Field(
        6.0,
        description="The trainer skips an optimizer step whose gradient norm is this many robust "
        "standard deviations above its recent ones (and any step with a non-finite loss or "
        "gradient norm): one bad batch costs one step, not a rollback.",
    )
    max_nonfinite_steps: PositiveSteps = Field(
        3,
        description="Non-finite losses in a row after which the trainer stops as diverged and the "
        "service rolls the run back.",
    )
    stall_timeout_s: real(gt=0, le=MAX_STALL_TIMEOUT_S) | None = Field(
        None,
        description="Seconds without a new training step, while the workload runs, after which "
        "the job counts as stalled (a hung collective, a dead data loader) and restarts from its "
        "newest checkpoint. Unset: a multiple of the job's measured median step time, never "
        "below the service's stall_timeout_floor_s.",
    )
    max_stall_restarts: integer(ge=0, le=MAX_STEPS) = Field(
        3,
        description="Restarts after stalls a job may have; the next stall fails it.",
    )
