"""The labels that tie an object to its job and attempt (`manifests.workload_labels` sets them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

JOB_ID_LABEL = "pretrain.io/job-id"
ATTEMPT_LABEL = "pretrain.io/attempt"
EVALUATION_STEP_LABEL = "pretrain.io/evaluation-step"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "pretrain-orchestrator"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGER}"


def labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def identity(obj: Mapping[str, Any]) -> tuple[int, int] | None:
    """(job id, attempt) from an object's labels; None if it has none we can read."""
    found = labels(obj)
    try:
        return int(found[JOB_ID_LABEL]), int(found[ATTEMPT_LABEL])
    except (KeyError, TypeError, ValueError):
        return None


def evaluation_identity(obj: Mapping[str, Any]) -> tuple[int, int] | None:
    """(job id, step) of an evaluation's object; None for anything else."""
    found = labels(obj)
    try:
        return int(found[JOB_ID_LABEL]), int(found[EVALUATION_STEP_LABEL])
    except (KeyError, TypeError, ValueError):
        return None


def attempt_selector(job_id: int, attempt: int | None = None) -> str:
    """The label selector of a job's objects, or of one attempt's."""
    selector = f"{JOB_ID_LABEL}={job_id}"
    return selector if attempt is None else f"{selector},{ATTEMPT_LABEL}={attempt}"
