"""Benchmark evaluation of checkpoints: which few-shot tasks, which checkpoints, on what machine.

Apart from `eval` (held-out loss during training): each chosen checkpoint is scored by
EleutherAI's lm-eval harness in a workload of its own (`python -m trainer.benchmarks`), never
inside the training pods, and a failed evaluation never fails the job.
"""

from __future__ import annotations

from pydantic import Field

from service.spec.fields import (
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_PATTERN,
    Flag,
    PositiveSteps,
    Section,
    SpecPath,
    integer,
    real,
)

# lm-eval's few-shot contexts grow with every shot; past this a tiny model's window is long gone.
MAX_NUM_FEWSHOT = 64
MAX_BENCHMARKS = 32


class BenchmarkSpec(Section):
    """One multiple-choice task: a JSONL file of `{"question", "options", "answer"}` items."""

    task: str = Field(
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        pattern=IDENTIFIER_PATTERN,
        description="The task's name in results, metrics and the report, e.g. arc-mini.",
    )
    path: SpecPath = Field(
        description='The items, one {"question": str, "options": [str, ...], "answer": int} a '
        "line: a local path under an allowed root (relative: under the data root) or an s3:// "
        "URI. Nothing is downloaded from the internet."
    )
    num_fewshot: integer(ge=0, le=MAX_NUM_FEWSHOT) = Field(
        0, description="Solved examples put before each question."
    )
    limit: integer(ge=1, le=10**7) | None = Field(
        None, description="Score only the first this many items; unset: all of them."
    )


class EvaluationCheckpointsSpec(Section):
    """Which saved checkpoints are scored; each rule adds its own."""

    every: PositiveSteps | None = Field(
        None,
        description="Every N-th checkpoint: the steps that are multiples of N × "
        "checkpoint.interval_steps.",
    )
    stage_ends: Flag = Field(False, description="The checkpoint at the end of every stage.")
    final: Flag = Field(True, description="The newest checkpoint once the job has finished.")


class EvaluationResourcesSpec(Section):
    """The machine (one pod, one process on the local backend) an evaluation runs on."""

    cpu: integer(gt=0, le=1024) = Field(4, description="CPU cores, requested and the limit.")
    memory_gib: real(gt=0, le=16384) = Field(
        16.0, description="Memory in GiB, requested and the limit: the exported model and lm-eval."
    )
    gpus: integer(ge=0, le=8) = Field(0, description="GPUs; 0 scores on the CPU.")


class EvaluationSpec(Section):
    """Few-shot benchmarks scored on chosen checkpoints, each in its own workload."""

    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=list,
        max_length=MAX_BENCHMARKS,
        description="The tasks; none (the default) evaluates nothing.",
    )
    checkpoints: EvaluationCheckpointsSpec = Field(
        default_factory=EvaluationCheckpointsSpec, description="Which checkpoints are scored."
    )
    resources: EvaluationResourcesSpec = Field(
        default_factory=EvaluationResourcesSpec, description="The evaluation workload's machine."
    )
