"""Render the trainer config (TrainerConfig schema v1) of one attempt from a stored job.

The JSON is the whole contract with the trainer image: this module writes every field of
schema v1 out in full, which keeps the rendered file a complete record of what the attempt
ran with, and checks it with the trainer's own models (`trainer.config`, which imports
without torch), so the two sides cannot disagree about a field or a rule.
Spec fields with no v1 counterpart are memory or service knobs that leave the numerics
alone (recompute, optimizer_offload, checkpoint.storage, watchdog, planner inputs);
combinations the trainer cannot run raise `ValueError`. The job comes typed from its row: this
module reads no spec field by name and restates no default.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Sequence
from typing import Any

from service.checkpoints import job_directory
from service.controller.manifests.workloads import TERMINATION_GRACE_S
from service.db.models import Attempt, Job
from service.jobspec import Derivation
from service.planner import Plan
from service.presets import ModelArch
from service.settings import Settings
from service.spec import (
    CheckpointSpec,
    OptimizerSpec,
    ParallelismSpec,
    PrecisionSpec,
    ResourcesSpec,
    ScheduleSpec,
    StagePlan,
    StageSpec,
)
from trainer.config import ConfigError, config_from_dict

TRAINER_CONFIG_SCHEMA_VERSION = 1
# The spec has no seed fields yet; both seeds stay at the trainer's documented default.
DEFAULT_SEED = 1234
EMBEDDED_SCHEME = "embedded://"
BYTE_TOKENIZER = "byte"

# Trainer-side knobs the spec does not expose, written out so the file is complete.
_METRICS_DEFAULTS = {
    "flush_interval_s": 2.0,
    "max_buffer": 10000,
    "timeout_s": 5.0,
}
_TRAIN_DEFAULTS = {"log_interval": 1}
# The trainer's first line of defence (skip a step on a non-finite loss or a grad-norm spike)
# at the trainer's own defaults, written out: the config a pod gets says what it will do.
# The spec's watchdog section sets the z-score and the non-finite run that ends the trainer.
_SKIP_STEP_DEFAULTS = {
    "skip_grad_norm_window": 100,
    "skip_grad_norm_min_history": 20,
    "max_consecutive_skips": 5,
}
# No injected faults beyond the spec's `corrupt_steps` (those are per data source) and its
# `faults` section (rendered below).
_NO_FAULTS = {
    "lr_blowup_from_step": None,
    "lr_blowup_factor": 1000.0,
    "nan_steps": [],
    "grad_spike_steps": [],
    "grad_spike_factor": 1000.0,
}
# Where a trainer writes how it ended: the container's termination message on Kubernetes (the
# local backend points it at its workload folder).
TERMINATION_LOG = "/dev/termination-log"


def termination_grace_s(job: Job) -> int:
    """Seconds the attempt's processes get after SIGTERM to save: the spec's, else the plan's
    (sized from the checkpoint's write time), else the default of plans stored before that."""
    spec = job.pretrain_spec
    if spec.resources.termination_grace_s is not None:
        return spec.resources.termination_grace_s
    plan = job.memory_plan
    if plan is not None and plan.checkpoint is not None:
        return plan.checkpoint.termination_grace_s
    return TERMINATION_GRACE_S


class RenderError(ValueError):
    """A stored spec the trainer config cannot express; `loc` is the spec field to change."""

    def __init__(self, message: str, loc: Sequence[str | int] = ()) -> None:
        super().__init__(message)
        self.loc = list(loc)


def render_trainer_config(
    job: Job,
    attempt: Attempt,
    settings: Settings,
    *,
    resume_from: str | None,
    ingest_token: str | None,
) -> dict[str, Any]:
    """The TrainerConfig v1 JSON mapping of one attempt of a stored pretraining job.

    Everything comes typed from the row (`job.spec`, `job.derivation`, `job.memory_plan`), so a
    spec stored before a field existed renders with that field's one default, the spec model's.
    """
    spec, derivation = job.pretrain_spec, job.derivation
    if derivation is None:
        raise ValueError(f"job {job.id} was stored without its derived numbers; re-submit it")
    if job.id < 0:
        raise ValueError(f"job_id must not be negative, got {job.id}")
    if attempt.number < 0:
        raise ValueError(f"attempt must not be negative, got {attempt.number}")
    lr_scale = attempt.lr_scale
    if not (isinstance(lr_scale, int | float) and math.isfinite(lr_scale) and lr_scale > 0):
        raise ValueError(f"lr_scale must be a positive finite number, got {lr_scale!r}")
    resources, watchdog = spec.resources, spec.watchdog
    rendered = {
        "schema_version": TRAINER_CONFIG_SCHEMA_VERSION,
        "job": {
            "id": str(job.id),
            "attempt": attempt.number,
            "name": job.name,
            "result_path": TERMINATION_LOG,
        },
        "model": _model(derivation.model, job.memory_plan),
        "parallel": _parallel(spec.parallelism, resources),
        "precision": _precision(spec.precision, resources),
        "optimizer": _optimizer(spec.optimizer),
        "schedule": _schedule(spec.schedule, derivation),
        "batch": {
            "micro_batch_size": spec.batch.micro_batch_size,
            "global_batch_size": spec.batch.global_batch_size,
        },
        "stages": _stages(spec.stages, derivation.stages, settings),
        "data": {
            "seed": DEFAULT_SEED,
            "tokenizer": (
                data_path(spec.tokenizer.path, settings, loc=["tokenizer", "path"])
                if spec.tokenizer
                else BYTE_TOKENIZER
            ),
            "cache_dir": None,
            "split": spec.data.split,
            "reset_position_ids": spec.data.reset_position_ids,
            "reset_attention_mask": spec.data.reset_attention_mask,
            "eod_mask_loss": spec.data.eod_mask_loss,
            "mmap_bin_files": spec.data.mmap_bin_files,
            "trace_dir": None,
            "skip_ranges": _ranges(attempt.skip_ranges),
        },
        "checkpoint": _checkpoint(
            spec.checkpoint, job.id, job.name, resume_from, settings, termination_grace_s(job)
        ),
        "eval": {
            "interval_steps": spec.eval.interval_steps,
            "samples_per_channel": spec.eval.samples_per_channel,
        },
        "metrics": _metrics(job.id, job.name, attempt.number, ingest_token, settings),
        "lr_scale": float(lr_scale),
        # In the trainer's order of fields.
        "train": {
            "seed": DEFAULT_SEED,
            "max_nonfinite_steps": watchdog.max_nonfinite_steps,
            **_TRAIN_DEFAULTS,
            # MFU against a nominal CPU figure would be meaningless: leave it out on CPU.
            "peak_tflops": None if resources.gpu_type == "cpu" else float(resources.peak_tflops),
            "skip_grad_norm_zscore": float(watchdog.skip_grad_norm_zscore),
            **_SKIP_STEP_DEFAULTS,
        },
        # A hang is the first attempt's only: the attempt restarted after it passes the step.
        "faults": {
            **_NO_FAULTS,
            "hang_at_step": spec.faults.hang_at_step if attempt.number == 0 else None,
        },
    }
    try:
        config_from_dict(rendered)
    except ConfigError as exc:
        raise ValueError(f"the trainer would refuse this config: {exc}") from exc
    return rendered


def _model(model: ModelArch, plan: Plan | None) -> dict[str, Any]:
    moe = model.moe
    # Megatron allocates the padded embedding (plan.vocab.allocated), which checkpoints carry.
    vocab_size = plan.vocab.allocated if plan is not None else model.vocab_size
    if vocab_size < model.vocab_size:
        raise ValueError(
            f"plan.vocab.allocated {vocab_size} is below the model's vocab_size "
            f"{model.vocab_size}; re-plan the job"
        )
    return {
        "num_layers": model.num_layers,
        "hidden_size": model.hidden_size,
        "num_attention_heads": model.num_attention_heads,
        "num_query_groups": model.num_query_groups,
        "ffn_hidden_size": model.ffn_hidden_size,
        "vocab_size": vocab_size,
        "max_position_embeddings": model.max_position_embeddings,
        "rope_base": float(model.rope_base),
        "norm_eps": float(model.norm_eps),
        "tie_embeddings": model.tie_embeddings,
        "qkv_bias": model.qkv_bias,
        "moe": None
        if moe is None
        else {
            "num_experts": moe.num_experts,
            "top_k": moe.top_k,
            "moe_ffn_hidden_size": moe.moe_ffn_hidden_size,
            "shared_expert_ffn_hidden_size": moe.shared_expert_ffn_hidden_size,
        },
    }


def _parallel(parallel: ParallelismSpec, resources: ResourcesSpec) -> dict[str, Any]:
    if parallel.sequence_parallel and resources.gpu_type == "cpu":
        raise RenderError(
            "sequence_parallel needs Transformer Engine or Apex kernels, which run on GPUs only; "
            "turn it off for gpu_type cpu",
            loc=["parallelism", "sequence_parallel"],
        )
    # optimizer_offload has no v1 field: it moves optimizer state, not the numerics.
    return {
        "tensor": parallel.tensor,
        "pipeline": parallel.pipeline,
        "context": parallel.context,
        "expert": parallel.expert,
        "virtual_pipeline": parallel.virtual_pipeline,
        "sequence_parallel": parallel.sequence_parallel,
        "distributed_optimizer": parallel.distributed_optimizer,
    }


def _precision(precision: PrecisionSpec, resources: ResourcesSpec) -> dict[str, Any]:
    dtype: str = precision.dtype
    if resources.gpu_type == "cpu":
        dtype = "fp32"  # CPU processes compute in fp32 whatever the spec asks for
    elif dtype == "fp8":
        # Trainer schema v1 has no fp8 (Transformer Engine recipes): train bf16, which is also
        # the format fp8 training keeps its master weights and non-GEMM ops in.
        dtype = "bf16"
    scale = precision.loss_scale
    return {
        "dtype": dtype,
        "loss_scale": {
            "initial_scale": float(scale.initial_scale),
            "min_scale": float(scale.min_scale),
            "growth_interval": scale.growth_interval,
            "growth_factor": float(scale.growth_factor),
            "backoff_factor": float(scale.backoff_factor),
            "hysteresis": scale.hysteresis,
        },
    }


def _optimizer(optimizer: OptimizerSpec) -> dict[str, Any]:
    names = (
        "lr",
        "min_lr",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_eps",
        "clip_grad",
        "z_loss",
        "embedding_grad_scale",
    )
    return {name: float(getattr(optimizer, name)) for name in names}


def _schedule(schedule: ScheduleSpec, derivation: Derivation) -> dict[str, Any]:
    # kind and decay_shape are the spec's Literals, which the trainer's schema v1 shares.
    total = derivation.total_train_iters
    decay = round(schedule.decay_fraction * total) if schedule.kind == "wsd" else 0
    return {
        "kind": schedule.kind,
        "warmup_steps": derivation.warmup_iters,
        "decay_steps": decay,
        "decay_shape": schedule.decay_shape,
    }


def _stages(
    stages: Sequence[StageSpec], planned: Sequence[StagePlan], settings: Settings
) -> list[dict[str, Any]]:
    names, planned_names = [s.name for s in stages], [p.stage for p in planned]
    if names != planned_names:
        raise ValueError(
            f"the derived stages {planned_names} do not match the spec's stages {names}; "
            "re-validate the spec"
        )
    return [
        {
            "name": stage.name,
            "steps": plan.train_iters,
            "seq_length": stage.seq_length,
            # null means the model's rope_base, exactly as the spec reads an unset stage base
            "rope_base": None if stage.rope_base is None else float(stage.rope_base),
            "lr_scale": float(stage.lr_scale),
            "data": [
                {
                    "channel": source.channel,
                    "path": data_path(source.path, settings, loc=["stages", i, "data", j, "path"]),
                    "weight": float(source.weight),
                    "corrupt": [list(bounds) for bounds in source.corrupt_steps],
                    "corrupt_kind": "random",
                }
                for j, source in enumerate(stage.data)
            ],
        }
        for i, (stage, plan) in enumerate(zip(stages, planned, strict=True))
    ]


def data_path(path: str, settings: Settings, *, loc: Sequence[str | int] = ()) -> str:
    """Where a trainer pod finds a data source: relative paths live under `settings.data_root`."""
    if path.startswith(EMBEDDED_SCHEME) or "://" in path or path.startswith("/"):
        return path
    root = posixpath.normpath(settings.data_root)
    resolved = posixpath.normpath(posixpath.join(root, path))
    if posixpath.commonpath([root, resolved]) != root:
        raise RenderError(
            f"data path {path!r} leaves the data volume ({settings.data_root}); name a path under "
            "it, or an absolute one",
            loc=loc,
        )
    return resolved


def _ranges(ranges: Sequence[Sequence[int]]) -> list[list[int]]:
    result = []
    for bounds in ranges:
        pair = list(bounds)
        valid = (
            len(pair) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) for b in pair)
            and 0 <= pair[0] < pair[1]
        )
        if not valid:
            raise ValueError(f"a skip range is [start, end) with 0 <= start < end, got {pair}")
        result.append(pair)
    return result


def _metrics(
    job_id: int, job_name: str, attempt: int, ingest_token: str | None, settings: Settings
) -> dict[str, Any]:
    # The trainer also keeps every record in a JSONL file: beside the checkpoints, one file per
    # attempt, it outlives the pod (a relative path would land in the image's working directory).
    directory = job_directory(job_id, job_name, settings)
    return {
        "url": settings.ingest_url,
        "token": ingest_token,
        "jsonl_path": f"{directory}/metrics/attempt-{attempt}.jsonl",
        **_METRICS_DEFAULTS,
    }


def _checkpoint(
    checkpoint: CheckpointSpec,
    job_id: int,
    job_name: str,
    resume_from: str | None,
    settings: Settings,
    termination_grace_s: int,
) -> dict[str, Any]:
    # Every attempt of a job writes into one directory on the checkpoint volume, so a rollback
    # finds the checkpoints of earlier attempts. spec.checkpoint.storage is not honoured yet: the
    # v1 trainer writes to a mounted path, and the volume is mounted at checkpoint_root.
    return {
        "directory": job_directory(job_id, job_name, settings),
        "interval_steps": checkpoint.interval_steps,
        "keep_last": checkpoint.keep_last,
        "resume_from": resume_from,
        "init_from": None,
        "save_initial": False,
        # The checkpoint a rollback resumed from must survive keep_last rotation.
        "pinned": [resume_from] if resume_from else [],
        "save_on_sigterm": True,
        "termination_grace_s": float(termination_grace_s),
    }
