"""How the model is laid out and computed on the machines: parallelism, precision, recompute."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.spec.fields import (
    MAX_EXPERTS,
    MAX_LAYERS,
    MAX_PARALLEL_SIZE,
    MAX_REAL,
    MAX_STEPS,
    Flag,
    PositiveFloat,
    Section,
    integer,
    real,
)


class ParallelismSpec(Section):
    """How Megatron-core splits the model and the batch across processes."""

    tensor: integer(gt=0, le=MAX_PARALLEL_SIZE) = Field(
        1, description="Tensor-parallel size: splits every layer's matrices."
    )
    pipeline: integer(gt=0, le=MAX_PARALLEL_SIZE) = Field(
        1, description="Pipeline-parallel size: splits the layers into stages."
    )
    context: integer(gt=0, le=MAX_PARALLEL_SIZE) = Field(
        1, description="Context-parallel size: splits every sequence."
    )
    expert: integer(gt=0, le=MAX_EXPERTS) = Field(
        1, description="Expert-parallel size: splits the experts of MoE layers."
    )
    virtual_pipeline: integer(gt=0, le=MAX_PARALLEL_SIZE) | None = Field(
        None,
        description="Model chunks per pipeline rank (interleaved 1F1B); unset = not interleaved.",
    )
    sequence_parallel: Flag = Field(
        False,
        description="Shard norm and dropout activations along the sequence across tensor ranks.",
    )
    distributed_optimizer: Flag = Field(
        False, description="Shard optimizer state across data-parallel ranks (ZeRO-1)."
    )
    optimizer_offload: Flag = Field(
        False, description="Keep optimizer state in host memory; needs the distributed optimizer."
    )


class LossScaleSpec(Section):
    """Dynamic loss scaling, used only with fp16."""

    initial_scale: PositiveFloat = Field(65536.0, description="Loss scale at the first step.")
    min_scale: PositiveFloat = Field(1.0, description="The scale never drops below this.")
    growth_interval: integer(gt=0, le=MAX_STEPS) = Field(
        1000, description="Steps without overflow before the scale grows."
    )
    growth_factor: real(gt=1, le=MAX_REAL) = Field(
        2.0, description="Multiplier applied when the scale grows."
    )
    backoff_factor: real(gt=0, lt=1) = Field(
        0.5, description="Multiplier applied after an overflow."
    )
    hysteresis: integer(gt=0, le=MAX_STEPS) = Field(
        2, description="Overflows tolerated before the scale backs off."
    )


Dtype = Literal["bf16", "fp16", "fp8"]


class PrecisionSpec(Section):
    """Numeric format of the matrix multiplies; accepts the plain form `precision: bf16`."""

    dtype: Dtype = Field(
        "bf16", description="bf16, fp16 (with loss scaling) or fp8 (Hopper and newer)."
    )
    loss_scale: LossScaleSpec = Field(
        default_factory=LossScaleSpec,
        description="Dynamic loss scaling for fp16; ignored otherwise.",
    )


RecomputeMode = Literal["none", "selective", "full", "offload"]


class RecomputeSpec(Section):
    """Activation recomputation; accepts the plain form `recompute: selective`."""

    mode: RecomputeMode = Field(
        "none",
        description="none, selective (attention core only), full (whole layers) or offload (to host).",
    )
    recompute_layers: integer(gt=0, le=MAX_LAYERS) | None = Field(
        None, description="With mode full: layers recomputed as one chunk; default 1."
    )
