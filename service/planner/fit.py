"""Refusing a plan that does not fit in GPU memory, with the changes that would make it fit."""

from __future__ import annotations

import copy
from typing import Any

from service.planner.memory import FIT_FRACTION, estimate_memory
from service.planner.params import count_params, vocab_for
from service.planner.plan import Plan
from service.spec import Problem, SpecInvalid, ValidatedSpec, validate_spec

# A refusal lists at most this many ways to fit, single knobs first.
MAX_SUGGESTED_FIXES = 4


# Sequences at least this long make context parallelism worth trying when memory is short.
LONG_SEQUENCE = 8192


_COMPONENT_NAMES = {
    "weights": "weights",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "activations": "activations",
    "overhead": "overhead",
}


def memory_problems(validated: ValidatedSpec, plan: Plan) -> list[Problem]:
    """One problem when the plan does not fit in GPU memory (unless allow_over_memory).

    The message quotes need against capacity, the biggest component, and the changes that
    would make it fit (single knobs, then the distributed optimizer paired with tensor,
    pipeline or recompute), each re-validated and re-planned at the same world size.
    """
    memory = plan.memory
    if memory.fits or validated.spec.allow_over_memory:
        return []
    breakdown = memory.breakdown.model_dump()
    biggest = max(breakdown, key=breakdown.__getitem__)
    msg = (
        f"needs {memory.per_gpu_gib:.1f} GiB of {memory.capacity_gib:g} GiB "
        f"({memory.utilisation:.0%}; at most {FIT_FRACTION:.0%} fits)"
    )
    if len(memory.stages) > 1:
        worst = next(stage for stage in memory.stages if stage.stage == memory.worst_stage)
        msg += f" in stage {worst.stage!r} (seq_length {worst.seq_length})"
    msg += f", mostly {_COMPONENT_NAMES[biggest]} ({breakdown[biggest]:.1f} GiB)"
    fixes = _fixes_that_fit(validated)
    if fixes:
        msg += "; would fit with: " + ", ".join(f"{label} ({gib:.1f} GiB)" for label, gib in fixes)
    else:
        msg += (
            "; no single change of distributed optimizer, tensor, pipeline, recompute, micro "
            "batch, optimizer offload or context fits at this world size: use more GPUs or "
            "combine several"
        )
    return [Problem(loc=["resources", "gpu_memory_gib"], msg=msg, type="memory")]


def _fixes_that_fit(validated: ValidatedSpec) -> list[tuple[str, float]]:
    spec = validated.spec
    raw = spec.model_dump(mode="json", exclude_unset=True)
    parallel = spec.parallelism
    changes: list[tuple[str, dict[str, Any]]] = []
    if not parallel.distributed_optimizer:
        changes.append(("distributed_optimizer", {"parallelism.distributed_optimizer": True}))
    changes.append((f"tensor {parallel.tensor * 2}", {"parallelism.tensor": parallel.tensor * 2}))
    changes.append(
        (f"pipeline {parallel.pipeline * 2}", {"parallelism.pipeline": parallel.pipeline * 2})
    )
    if spec.recompute.mode == "none":
        changes.append(("recompute selective", {"recompute.mode": "selective"}))
    if spec.recompute.mode in ("none", "selective"):
        changes.append(("recompute full", {"recompute.mode": "full"}))
    micro = spec.batch.micro_batch_size
    if micro > 1:
        changes.append((f"micro_batch_size {micro // 2}", {"batch.micro_batch_size": micro // 2}))
    if not parallel.optimizer_offload:
        offload = {"parallelism.optimizer_offload": True, "parallelism.distributed_optimizer": True}
        label = "optimizer_offload"
        if not parallel.distributed_optimizer:
            label = "distributed_optimizer + optimizer_offload"
        changes.append((label, offload))
    if max(stage.seq_length for stage in spec.stages) >= LONG_SEQUENCE:
        changes.append(
            (f"context {parallel.context * 2}", {"parallelism.context": parallel.context * 2})
        )
    if not parallel.distributed_optimizer:
        # The distributed optimizer costs nothing in step time, so pair it with the other knobs.
        sharded = {"parallelism.distributed_optimizer": True}
        changes += [
            (f"distributed_optimizer + {label}", {**sharded, **change})
            for label, change in changes
            if label.startswith(("tensor", "pipeline", "recompute"))
        ]
    return _fitting(raw, changes)[:MAX_SUGGESTED_FIXES]


def _fitting(raw: dict, changes: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, float]]:
    fitting = []
    for label, change in changes:
        modified = copy.deepcopy(raw)
        for path, value in change.items():
            *parents, last = path.split(".")
            node = modified
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
        try:
            candidate = validate_spec(modified)
        except SpecInvalid:
            continue
        params = count_params(candidate.model)
        memory = estimate_memory(candidate, params, vocab_for(candidate))
        if memory.fits:
            fitting.append((label, memory.per_gpu_gib))
    return fitting
