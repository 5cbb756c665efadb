"""Kubernetes manifests of an attempt, by what each module owns.

`workloads`: what an attempt runs and what its objects are called; `pod`: what every
attempt's objects share (metadata, the token Secret, volumes, tolerations); `pytorchjob`: a
training attempt's PyTorchJob, `trainjob` its Trainer v2 TrainJob, `trainer_pod` what their
pods share; `batch_job`: a tokenizer or data attempt's batch Job; `evaluation_job`: a
checkpoint's benchmark evaluation, a batch Job of its own;
`review`: the manifests a spec would launch, as YAML for a person (`pretrainctl render`).

The package exports what its modules define, each loaded when first asked for (PEP 562): what
only names and runs a workload (`workloads`, `batch_commands`, `review`) needs no Kubernetes
client, so the service on the local backend (`pretrainctl serve`, the CLI's database commands)
starts without importing it, a second of every process start.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "batch_commands": (
        "DATA_CONFIG_FILE",
        "DATA_CONFIG_PATH",
        "DATA_CONTAINER_NAME",
        "DATA_LABELS",
        "EVALUATION_BENCHMARKS_FILE",
        "EVALUATION_CONFIG_FILE",
        "EVALUATION_CONTAINER_NAME",
        "EVALUATION_LABELS",
        "EVALUATION_LOG",
        "RESULT_FILE",
        "TOKENIZER_CONFIG_FILE",
        "TOKENIZER_CONFIG_PATH",
        "TOKENIZER_CONTAINER_NAME",
        "TOKENIZER_LABELS",
        "TOKENIZER_TTL_AFTER_FINISHED_S",
        "batch_command",
        "batch_config_file",
        "batch_config_json",
        "evaluation_command",
        "evaluation_config_files",
    ),
    "batch_job": (
        "BATCH_JOB_API_VERSION",
        "BATCH_JOB_KIND",
        "render_data_manifests",
        "render_tokenizer_manifests",
    ),
    "evaluation_job": ("render_evaluation_manifests",),
    "pytorchjob": (
        "CONTAINER_NAME",
        "MASTER_PORT",
        "MASTER_PORT_NAME",
        "PYTORCHJOB_API_VERSION",
        "PYTORCHJOB_KIND",
        "TRAINER_COMMAND",
        "render_manifests",
    ),
    "review": (
        "POD_CHECKPOINT_ROOT",
        "REVIEW_JOB_ID",
        "REVIEW_TOKEN",
        "render_for_review",
    ),
    "trainer_pod": (
        "CONFIG_FILE",
        "CONFIG_PATH",
        "GPU_RESOURCE",
        "KUEUE_PRIORITY_LABEL",
        "KUEUE_QUEUE_LABEL",
        "TERMINATION_LOG",
    ),
    "trainjob": (
        "TRAINJOB_API_VERSION",
        "TRAINJOB_CONTAINER_NAME",
        "TRAINJOB_KIND",
        "render_trainjob_manifests",
    ),
    "workloads": (
        "AnyWorkload",
        "BatchWorkload",
        "CONFIG_DIR",
        "DataWorkload",
        "EVALUATION_STEP_LABEL",
        "EVALUATION_WORKLOAD_KIND",
        "EvaluationWorkload",
        "MAX_WORKLOAD_NAME_LENGTH",
        "TERMINATION_GRACE_S",
        "TOKEN_ENV",
        "TOKEN_KEY",
        "TokenizerWorkload",
        "Workload",
        "config_map_name",
        "secret_name",
        "workload_labels",
        "workload_name",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # asked once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
