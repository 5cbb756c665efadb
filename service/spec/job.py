"""The pretraining job spec, composed of its sections, and the kinds of job there are."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from service.spec.data import DataSpec
from service.spec.evaluation import EvaluationSpec
from service.spec.faults import FaultsSpec
from service.spec.fields import (
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    Flag,
    Section,
    mapping_from_shorthand,
    real,
)
from service.spec.layout import Dtype, ParallelismSpec, PrecisionSpec, RecomputeMode, RecomputeSpec
from service.spec.model import ModelSpec, TokenizerSpec
from service.spec.resources import ResourcesSpec
from service.spec.stages import StageSpec
from service.spec.supervision import CheckpointSpec, EvalSpec, WatchdogSpec
from service.spec.training import BatchSpec, OptimizerSpec, ScheduleSpec

PRETRAIN_KIND = "pretrain"
TOKENIZER_KIND = "tokenizer"
DATA_KIND = "data"
JOB_KINDS = (PRETRAIN_KIND, TOKENIZER_KIND, DATA_KIND)
# Kinds that run one CPU workload with nothing to plan, and report a result before they exit.
BATCH_KINDS = (TOKENIZER_KIND, DATA_KIND)
# Below these the estimated days and the critical batch size are no longer finite numbers.
MIN_MFU = 0.001
MIN_TARGET_LOSS = 0.01
# Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models"): up to about 4 epochs
# of repeated data are nearly as good as new; past that returns fall fast, and past ~16 they
# are about nil. A limit above 100 epochs would warn of nothing.
DEFAULT_MAX_SOURCE_EPOCHS = 4.0
MAX_SOURCE_EPOCHS_BOUND = 100


class JobSpec(Section):
    """An LLM pretraining job: model, machines, parallel layout, schedule and data stages."""

    name: str = Field(
        max_length=NAME_MAX_LENGTH,
        pattern=NAME_PATTERN,
        description="Job name: lowercase letters, digits and '-', starting with a letter.",
    )
    kind: Literal["pretrain"] = Field(
        "pretrain",
        description="What the job does: pretrain (this spec); `tokenizer` takes a "
        "TokenizerJobSpec instead, `data` a DataJobSpec.",
    )
    model: ModelSpec = Field(description="Architecture: a preset, explicit fields, or both.")
    tokenizer: TokenizerSpec | None = Field(None, description="Tokenizer the data is encoded with.")
    resources: ResourcesSpec = Field(description="Machines and accelerators.")
    parallelism: ParallelismSpec = Field(
        default_factory=ParallelismSpec, description="Megatron-core parallel layout."
    )
    precision: Annotated[
        PrecisionSpec,
        BeforeValidator(
            mapping_from_shorthand("dtype"), json_schema_input_type=Dtype | PrecisionSpec
        ),
    ] = Field(
        default_factory=PrecisionSpec,
        description="bf16, fp16 or fp8, or a mapping with loss_scale.",
    )
    recompute: Annotated[
        RecomputeSpec,
        BeforeValidator(
            mapping_from_shorthand("mode"), json_schema_input_type=RecomputeMode | RecomputeSpec
        ),
    ] = Field(default_factory=RecomputeSpec, description="Activation recomputation mode.")
    batch: BatchSpec = Field(description="Micro and global batch sizes, in sequences.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="AdamW settings.")
    schedule: ScheduleSpec = Field(description="Learning-rate schedule.")
    stages: list[StageSpec] = Field(min_length=1, description="Training stages, run in order.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing.")
    data: DataSpec = Field(
        default_factory=DataSpec, description="How sources are split, packed and masked."
    )
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Held-out evaluation.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec,
        description="Few-shot benchmarks (lm-eval) scored on chosen checkpoints, each in a "
        "workload of its own.",
    )
    watchdog: WatchdogSpec = Field(
        default_factory=WatchdogSpec, description="Loss anomaly and stall policy."
    )
    faults: FaultsSpec = Field(
        default_factory=FaultsSpec, description="Fault injection for demos, tests and drills."
    )
    allow_over_memory: Flag = Field(
        False, description="Accept a plan whose memory estimate exceeds the accelerator's memory."
    )
    mfu: real(ge=MIN_MFU, le=1) = Field(
        0.4, description="Model FLOPs utilisation assumed when estimating time."
    )
    target_loss: real(ge=MIN_TARGET_LOSS, le=20) | None = Field(
        None,
        description="Final training loss aimed for; the planner sizes the critical batch from it.",
    )
    max_source_epochs: real(gt=0, le=MAX_SOURCE_EPOCHS_BOUND) = Field(
        DEFAULT_MAX_SOURCE_EPOCHS,
        description="The plan warns when the run takes more than this many epochs of a data "
        "source whose size it knows (Muennighoff et al. 2023: past ~4 epochs, repeated tokens "
        "are worth rapidly less than new ones).",
    )
