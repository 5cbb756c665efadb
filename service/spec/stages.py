"""Training stages: what each asks for, and what it works out to in steps."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.spec.data import DataSource
from service.spec.fields import (
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_PATTERN,
    MAX_SEQUENCE_LENGTH,
    MAX_TOKENS,
    PositiveFloat,
    Section,
    integer,
)


class StageSpec(Section):
    """A phase of training with its own token budget, sequence length and data mixture."""

    name: str = Field(
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        pattern=IDENTIFIER_PATTERN,
        description="Unique stage name, e.g. pretrain, long-context, anneal.",
    )
    tokens: integer(gt=0, le=MAX_TOKENS) = Field(description="Tokens to train in this stage.")
    seq_length: integer(gt=0, le=MAX_SEQUENCE_LENGTH) = Field(description="Tokens per sequence.")
    rope_base: PositiveFloat | None = Field(
        None, description="RoPE base for this stage; unset = the model's rope_base."
    )
    data: list[DataSource] = Field(min_length=1, description="The stage's data mixture.")
    lr_scale: PositiveFloat = Field(1.0, description="Multiplier on the schedule's learning rate.")


class StagePlan(BaseModel):
    """What one stage works out to in steps."""

    stage: str = Field(description="Stage name.")
    seq_length: int = Field(description="Tokens per sequence.")
    rope_base: float = Field(description="RoPE base in effect: the stage's, else the model's.")
    tokens_per_step: int = Field(description="global_batch_size × seq_length.")
    train_iters: int = Field(description="Optimizer steps: tokens // tokens_per_step.")
    tokens_trained: int = Field(
        description="train_iters × tokens_per_step; at most the tokens asked for."
    )
