"""Workloads as Kubernetes objects, through the Kubernetes API and its official client.

What each job kind runs as is a row of `kinds.WORKLOAD_KINDS`: a pretrain job's attempt is a
Kubeflow `PyTorchJob`, a tokenizer job's a plain `batch/v1` Job, each with a ConfigMap and a
Secret named after it and owned by it, so the garbage collector removes them with it.
`backend.KubernetesBackend` walks that table; nothing in it is particular to a kind.

`start_watch` runs an informer (`informer.Informer`): a thread that lists, then watches, the
PyTorchJobs this service manages, keeps them in a cache that `observe` answers from, and calls
back with the job id of each change. Without it, and for the kinds no informer watches,
`observe` lists the job's workloads each time.

Modules: `api` (the calls and what their failures mean), `kinds` (the table), `labels`,
`status` (phases and how a workload ended), `failures` (whether a failure is worth a retry),
`informer`, `backend`. The chart's Role is derived from the calls of all of them
(tests/helm/test_rbac.py).
"""

from service.controller.backends.kubernetes.api import load_configuration
from service.controller.backends.kubernetes.backend import KubernetesBackend
from service.controller.backends.kubernetes.failures import FailureVerdict, classify_failure
from service.controller.backends.kubernetes.informer import WATCH_BACKOFF_S
from service.controller.backends.kubernetes.kinds import (
    BATCH_JOB,
    CONFIG_MAP_SUFFIX,
    PYTORCHJOB,
    SECRET_SUFFIX,
    WORKLOAD_KINDS,
    OwnedKind,
    WorkloadKind,
)
from service.controller.backends.kubernetes.labels import (
    ATTEMPT_LABEL,
    JOB_ID_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_SELECTOR,
    MANAGER,
)
from service.controller.backends.kubernetes.status import Ending, batch_job_phase, workload_phase

__all__ = [
    "ATTEMPT_LABEL",
    "BATCH_JOB",
    "CONFIG_MAP_SUFFIX",
    "JOB_ID_LABEL",
    "MANAGED_BY_LABEL",
    "MANAGED_SELECTOR",
    "MANAGER",
    "PYTORCHJOB",
    "SECRET_SUFFIX",
    "WATCH_BACKOFF_S",
    "WORKLOAD_KINDS",
    "Ending",
    "FailureVerdict",
    "KubernetesBackend",
    "OwnedKind",
    "WorkloadKind",
    "batch_job_phase",
    "classify_failure",
    "load_configuration",
    "workload_phase",
]
