"""`TrainerConfig`: the sections composed, the rules across them, and the world they run in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from trainer.config.base import ConfigError, Section
from trainer.config.sections import (
    BatchConfig,
    CheckpointConfig,
    DataConfig,
    DataSourceConfig,
    EvalConfig,
    FaultsConfig,
    JobConfig,
    MetricsConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
    PrecisionConfig,
    ScheduleConfig,
    StageConfig,
    TrainConfig,
)

SCHEMA_VERSION = 1


class TrainerConfig(Section):
    """Everything one training attempt needs, rendered by the service as one JSON file."""

    schema_version: Literal[1] = SCHEMA_VERSION
    """Version of this schema; the trainer refuses any other."""
    job: JobConfig = Field(default_factory=JobConfig)
    """Which job and attempt this is."""
    model: ModelConfig
    """The architecture."""
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    """Model parallelism."""
    precision: PrecisionConfig = Field(default_factory=PrecisionConfig)
    """Numeric format."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """AdamW settings."""
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    """Learning-rate schedule."""
    batch: BatchConfig
    """Batch sizes."""
    stages: list[StageConfig]
    """Training stages, run in order."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Tokenizer, sampling seed and skipped steps."""
    checkpoint: CheckpointConfig
    """Checkpointing."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Held-out evaluation."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Metric reporting."""
    lr_scale: float = Field(1.0, gt=0)
    """Attempt-wide learning-rate multiplier, set by a rollback."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """The training loop."""
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    """Injected faults (tests and demos)."""

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run, all stages together."""
        return sum(stage.steps for stage in self.stages)

    def problems(self) -> Iterator[str]:
        """Rules across sections; paths are from the top of the config."""
        yield from self._model_against_parallel()
        yield from self._stages()
        yield from self._schedule()

    def _model_against_parallel(self) -> Iterator[str]:
        model, parallel = self.model, self.parallel
        tensor = parallel.tensor
        if model.num_attention_heads % tensor:
            yield (
                f"parallel.tensor: {model.num_attention_heads} attention heads are not divisible "
                f"by tensor size {tensor}"
            )
        if model.num_query_groups % tensor:
            yield (
                f"parallel.tensor: {model.num_query_groups} query groups are not divisible by "
                f"tensor size {tensor}"
            )
        if model.moe is None:
            if parallel.expert > 1:
                yield "parallel.expert: expert parallelism needs model.moe"
        elif model.moe.num_experts % parallel.expert:
            yield (
                f"parallel.expert: {model.moe.num_experts} experts are not divisible by expert "
                f"size {parallel.expert}"
            )
        chunks = parallel.pipeline * (parallel.virtual_pipeline or 1)
        if model.num_layers % chunks:
            yield (
                f"model.num_layers: {model.num_layers} layers do not split into pipeline × "
                f"virtual_pipeline = {chunks} equal chunks"
            )

    def _stages(self) -> Iterator[str]:
        if not self.stages:
            yield "stages: at least one stage is needed"
        seen: set[str] = set()
        context = self.parallel.context
        for index, stage in enumerate(self.stages):
            path = f"stages[{index}]"
            if stage.name in seen:
                yield f"{path}.name: {stage.name!r} is used by an earlier stage"
            seen.add(stage.name)
            if stage.seq_length > self.model.max_position_embeddings:
                yield (
                    f"{path}.seq_length: {stage.seq_length} exceeds model.max_position_embeddings "
                    f"{self.model.max_position_embeddings}"
                )
            if context > 1 and stage.seq_length % (2 * context):
                yield (
                    f"{path}.seq_length: {stage.seq_length} is not divisible by 2 × context size "
                    f"{context}"
                )

    def _schedule(self) -> Iterator[str]:
        schedule, total = self.schedule, self.total_steps
        if schedule.warmup_steps > total:
            yield f"schedule.warmup_steps: {schedule.warmup_steps} exceed the run's {total} steps"
        elif schedule.kind == "wsd" and schedule.warmup_steps + schedule.decay_steps > total:
            yield (
                f"schedule.decay_steps: warmup {schedule.warmup_steps} + decay "
                f"{schedule.decay_steps} exceed the run's {total} steps"
            )


def data_parallel_size(config: TrainerConfig, world_size: int) -> int:
    """Data-parallel replicas in a world of `world_size` processes."""
    parallel = config.parallel
    model_parallel = parallel.tensor * parallel.pipeline * parallel.context
    if world_size < 1 or model_parallel < 1 or world_size % model_parallel:
        raise ConfigError(
            f"parallel: world size {world_size} is not a multiple of tensor × pipeline × "
            f"context = {model_parallel}"
        )
    return world_size // model_parallel


def world_problems(config: TrainerConfig, world_size: int) -> list[str]:
    """What does not fit a world of `world_size` processes: batch and expert arithmetic."""
    if world_size < 1:
        return [f"world size must be at least 1, got {world_size}"]
    parallel = config.parallel
    if min(parallel.tensor, parallel.pipeline, parallel.context, parallel.expert) < 1:
        return []  # reported by the parallel section; the arithmetic below would be meaningless
    try:
        data_size = data_parallel_size(config, world_size)
    except ConfigError as exc:
        return exc.problems
    problems = []
    batch = config.batch
    per_pass = batch.micro_batch_size * data_size
    if per_pass >= 1 and batch.global_batch_size % per_pass:
        problems.append(
            f"batch.global_batch_size: {batch.global_batch_size} is not divisible by "
            f"micro_batch_size {batch.micro_batch_size} × data-parallel size {data_size}"
        )
    if parallel.expert > 1 and (data_size * parallel.context) % parallel.expert:
        problems.append(
            f"parallel.expert: {parallel.expert} does not divide data-parallel × context size "
            f"{data_size * parallel.context}"
        )
    return problems


def example_config() -> TrainerConfig:
    """A complete tiny CPU config that trains in seconds: the demo's and the tests' default."""
    return TrainerConfig(
        model=ModelConfig(
            num_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            num_query_groups=2,
            ffn_hidden_size=176,
            vocab_size=512,  # the byte tokenizer's 258 ids, padded
            max_position_embeddings=64,
        ),
        precision=PrecisionConfig(dtype="fp32"),
        optimizer=OptimizerConfig(lr=1e-3, min_lr=1e-4),
        schedule=ScheduleConfig(kind="wsd", warmup_steps=5, decay_steps=10),
        batch=BatchConfig(micro_batch_size=4, global_batch_size=8),
        stages=[
            StageConfig(
                name="pretrain",
                steps=40,
                seq_length=64,
                data=[
                    DataSourceConfig(channel="code", path="embedded://code", weight=0.4),
                    DataSourceConfig(channel="en", path="embedded://en", weight=0.4),
                    DataSourceConfig(channel="zh", path="embedded://zh", weight=0.2),
                ],
            ),
            StageConfig(
                name="anneal",
                steps=10,
                seq_length=64,
                data=[
                    DataSourceConfig(channel="code", path="embedded://code", weight=0.3),
                    DataSourceConfig(channel="en", path="embedded://en", weight=0.5),
                    DataSourceConfig(channel="zh", path="embedded://zh", weight=0.2),
                ],
            ),
        ],
        data=DataConfig(tokenizer="byte"),
        checkpoint=CheckpointConfig(directory="trainer-out/checkpoints", interval_steps=10),
        eval=EvalConfig(interval_steps=10, samples_per_channel=8),
        metrics=MetricsConfig(jsonl_path="trainer-out/metrics.jsonl"),
    )
