"""What the cross-field rules read: the spec, its resolved model and the numbers most rules need."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from service.presets import ModelArch
from service.spec.job import JobSpec
from service.spec.layout import ParallelismSpec
from service.spec.problems import Problem
from service.spec.stages import StageSpec


@dataclass(frozen=True)
class Context:
    """The spec and the numbers most rules read."""

    spec: JobSpec
    resolved_model: ModelArch | None

    @property
    def model(self) -> ModelArch:
        assert self.resolved_model is not None, (
            "rule needs the model; decorate it with needs_model"
        )
        return self.resolved_model

    @property
    def parallel(self) -> ParallelismSpec:
        return self.spec.parallelism

    @property
    def world_size(self) -> int:
        return self.spec.resources.world_size

    @property
    def model_parallel(self) -> int:
        """Processes holding one replica of the model: tensor × pipeline × context."""
        return self.parallel.tensor * self.parallel.pipeline * self.parallel.context

    @property
    def data_parallel(self) -> int | None:
        """Model replicas, or None when the world size does not split into whole replicas."""
        if self.world_size % self.model_parallel:
            return None
        return self.world_size // self.model_parallel

    @property
    def num_microbatches(self) -> int | None:
        """Micro-batches per process per step, or None when the global batch does not split."""
        if self.data_parallel is None:
            return None
        per_step = self.spec.batch.micro_batch_size * self.data_parallel
        if self.spec.batch.global_batch_size % per_step:
            return None
        return self.spec.batch.global_batch_size // per_step

    def tokens_per_step(self, stage: StageSpec) -> int:
        return self.spec.batch.global_batch_size * stage.seq_length

    def layers_per_model_chunk(self) -> int | None:
        """Layers in each pipeline stage's chunk (each virtual chunk when interleaved)."""
        chunks = self.parallel.pipeline * (self.parallel.virtual_pipeline or 1)
        return self.model.num_layers // chunks if self.model.num_layers % chunks == 0 else None


Rule = Callable[[Context], Iterable[Problem]]


def needs_model(rule: Rule) -> Rule:
    """Skip a rule that reads the architecture when the model could not be resolved."""

    @functools.wraps(rule)
    def guarded(context: Context) -> Iterable[Problem]:
        return rule(context) if context.resolved_model is not None else ()

    return guarded
