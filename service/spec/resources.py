"""The machines a job runs on: accelerator kinds, their peak throughput and capabilities."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from service.spec.fields import (
    KUBERNETES_NAME_MAX_LENGTH,
    KUBERNETES_NAME_PATTERN,
    MAX_GPU_MEMORY_GIB,
    MAX_GPUS_PER_NODE,
    MAX_NODES,
    MAX_PEAK_TFLOPS,
    Section,
    integer,
    real,
)

# A pod may take this long to stop after SIGTERM; past a day a grace period is a typo.
MAX_TERMINATION_GRACE_S = 86_400

GpuType = Literal[
    "H100",
    "H200",
    "H800",
    "H20",
    "A100",
    "A800",
    "V100",
    "L40S",
    "L4",
    "B100",
    "B200",
    "GB200",
    "cpu",
]
# Peak dense bf16 tensor TFLOPS of one device (SXM parts where there is a choice); V100 has no
# bf16, so its fp16 figure stands in. `cpu` is a nominal figure so that estimates stay finite.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100": 989.0,
    "H200": 989.0,
    "H800": 989.0,
    "H20": 148.0,
    "A100": 312.0,
    "A800": 312.0,
    "V100": 125.0,
    "L40S": 362.0,
    "L4": 121.0,
    "B100": 1750.0,
    "B200": 2250.0,
    "GB200": 2500.0,
    "cpu": 1.0,
}
# FP8 tensor cores arrived with Ada and Hopper; Ampere, Volta and CPUs have none.
FP8_GPU_TYPES = frozenset({"H100", "H200", "H800", "H20", "L40S", "L4", "B100", "B200", "GB200"})
BF16_UNSUPPORTED_GPU_TYPES = frozenset({"V100"})
# Below these a plan's utilisation and days are no longer finite numbers worth printing.
MIN_GPU_MEMORY_GIB = 0.01
MIN_PEAK_TFLOPS = 0.001


def _canonical_gpu_type(value: Any) -> Any:
    """Accept `h100` for `H100`: users type GPU names in any case."""
    if isinstance(value, str):
        for known in PEAK_BF16_TFLOPS:
            if value.strip().lower() == known.lower():
                return known
    return value


class ResourcesSpec(Section):
    """The machines the job runs on."""

    nodes: integer(gt=0, le=MAX_NODES) = Field(description="Machines (Kubernetes pods) in the job.")
    gpus_per_node: integer(gt=0, le=MAX_GPUS_PER_NODE) = Field(
        description="Accelerators per machine; with gpu_type cpu, training processes per machine."
    )
    gpu_type: Annotated[GpuType, BeforeValidator(_canonical_gpu_type)] = Field(
        description="Accelerator model, or `cpu` to train in CPU processes."
    )
    gpu_memory_gib: real(ge=MIN_GPU_MEMORY_GIB, le=MAX_GPU_MEMORY_GIB) = Field(
        description="Memory of one accelerator (or one CPU process) in GiB."
    )
    peak_tflops: real(ge=MIN_PEAK_TFLOPS, le=MAX_PEAK_TFLOPS) | None = Field(
        None,
        description="Peak dense bf16 TFLOPS of one accelerator; defaults from a table by gpu_type.",
    )

    queue: str | None = Field(
        None,
        min_length=1,
        max_length=KUBERNETES_NAME_MAX_LENGTH,
        pattern=KUBERNETES_NAME_PATTERN,
        description="Kueue LocalQueue (in the job's namespace) that admits the workload; it is "
        "created suspended and the job shows queued until Kueue admits it. Unset: no queue.",
    )
    priority: str | None = Field(
        None,
        min_length=1,
        max_length=KUBERNETES_NAME_MAX_LENGTH,
        pattern=KUBERNETES_NAME_PATTERN,
        description="Priority class (Kueue WorkloadPriorityClass or Kubernetes PriorityClass) "
        "of the workload; higher ones may preempt lower ones. Unset: the cluster's default.",
    )
    termination_grace_s: integer(ge=1, le=MAX_TERMINATION_GRACE_S) | None = Field(
        None,
        description="Seconds a pod gets after SIGTERM (preemption, drain) to finish its step and "
        "save a checkpoint before it is killed. Unset: sized by the planner from the checkpoint "
        "size and write speed (plan.checkpoint.termination_grace_s).",
    )

    @model_validator(mode="after")
    def _default_peak_tflops_from_gpu_type(self) -> ResourcesSpec:
        if self.peak_tflops is None:
            self.peak_tflops = PEAK_BF16_TFLOPS[self.gpu_type]
        return self

    @property
    def world_size(self) -> int:
        """Training processes in all: nodes × gpus_per_node."""
        return self.nodes * self.gpus_per_node
