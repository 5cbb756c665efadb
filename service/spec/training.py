"""How the job trains: batch sizes, the optimizer and the learning-rate schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.spec.fields import (
    MAX_GLOBAL_BATCH_SIZE,
    MAX_MICRO_BATCH_SIZE,
    MAX_TOKENS,
    NonNegativeFloat,
    PositiveFloat,
    Section,
    integer,
    real,
)


class BatchSpec(Section):
    """Sequences per step: micro-batches per process, and the global batch across all of them."""

    micro_batch_size: integer(gt=0, le=MAX_MICRO_BATCH_SIZE) = Field(
        description="Sequences one process runs forward at a time."
    )
    global_batch_size: integer(gt=0, le=MAX_GLOBAL_BATCH_SIZE) = Field(
        description="Sequences per optimizer step, all processes together."
    )


class OptimizerSpec(Section):
    """AdamW and the gradient knobs around it."""

    lr: PositiveFloat = Field(3e-4, description="Peak learning rate, reached after warmup.")
    min_lr: NonNegativeFloat = Field(3e-5, description="Learning rate at the end of the decay.")
    weight_decay: NonNegativeFloat = Field(0.1, description="Decoupled weight decay.")
    adam_beta1: real(ge=0, lt=1) = Field(0.9, description="AdamW first-moment decay.")
    adam_beta2: real(ge=0, lt=1) = Field(0.95, description="AdamW second-moment decay.")
    adam_eps: PositiveFloat = Field(1e-8, description="AdamW denominator epsilon.")
    clip_grad: NonNegativeFloat = Field(
        1.0, description="Global gradient-norm clip; 0 disables it."
    )
    z_loss: NonNegativeFloat = Field(
        0.0, description="Weight of the z-loss on the output logits; 0 disables it."
    )
    embedding_grad_scale: PositiveFloat = Field(
        1.0, description="Multiplier on the embedding's gradient (below 1 damps early spikes)."
    )


class ScheduleSpec(Section):
    """Learning-rate schedule over the whole job, all stages together."""

    kind: Literal["wsd", "cosine", "constant"] = Field(
        "wsd", description="wsd (warmup-stable-decay), cosine, or constant after warmup."
    )
    warmup_tokens: integer(ge=0, le=MAX_TOKENS) = Field(
        description="Tokens of linear warmup from 0 to lr."
    )
    decay_fraction: real(ge=0, le=1) = Field(
        0.1, description="WSD only: fraction of all tokens spent in the final decay."
    )
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = Field(
        "linear", description="WSD only: shape of the final decay from lr to min_lr."
    )
