"""What each job kind runs as in the cluster: one row a kind, walked by one generic backend.

A row says where the workload's API lives (group, version, plural), which builder renders it
with what it owns from the workload, how its status reads as a phase, how it is deleted,
whether the informer watches it and which container's termination message carries the
trainer's outcome lines. What a workload owns (its ConfigMap and Secret) is a row of its own:
named after the workload, created before it, owned by it and deleted with it.

Adding a kind is a module in `manifests/` whose builder returns `{key: workload, "configmap":
..., "secret": ...}` and names the kind as owner, a phase function in `status.py` for its
conditions, and a row here. A pretrain job's attempt runs as one of two rows, chosen per install
(`Settings.kubernetes_workload`): a Training Operator `PyTorchJob` (the default) or a Trainer v2
`TrainJob`; `workload_kinds(settings)` is the table a backend walks.

Kueue's `Workload` objects are read, never written: why a queued workload waits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from kubernetes import client

from service.controller.backends.kubernetes.labels import (
    EVALUATION_STEP_LABEL,
    JOB_ID_LABEL,
    attempt_selector,
    evaluation_identity,
    identity,
)
from service.controller.backends.kubernetes.status import (
    batch_job_phase,
    trainjob_phase,
    workload_phase,
)
from service.controller.manifests import (
    BATCH_JOB_API_VERSION,
    BATCH_JOB_KIND,
    CONTAINER_NAME,
    EVALUATION_WORKLOAD_KIND,
    PYTORCHJOB_API_VERSION,
    PYTORCHJOB_KIND,
    TRAINJOB_API_VERSION,
    TRAINJOB_CONTAINER_NAME,
    TRAINJOB_KIND,
    AnyWorkload,
    DataWorkload,
    EvaluationWorkload,
    TokenizerWorkload,
    Workload,
    render_data_manifests,
    render_evaluation_manifests,
    render_manifests,
    render_tokenizer_manifests,
    render_trainjob_manifests,
)
from service.controller.reconcile import Phase
from service.settings import Settings
from service.spec import DATA_KIND, PRETRAIN_KIND, TOKENIZER_KIND

Render = Callable[..., dict[str, dict[str, Any]]]
"""`(workload, settings, *, owner_uid=None)`: the workload and what it owns, by manifest key."""


@dataclass(frozen=True)
class OwnedKind:
    """An object an attempt mounts: named after its workload, owned by it, deleted with it.

    The methods are `CoreV1Api`'s, unbound: the backend calls them with its own client.
    """

    kind: str
    key: str  # its key in what the workload's builder renders
    suffix: str  # its name is the workload's name and this (`manifests.config_map_name`, ...)
    create: Callable[..., Any]
    read: Callable[..., Any]
    patch: Callable[..., Any]
    delete: Callable[..., Any]

    def name_for(self, workload_name: str) -> str:
        return workload_name + self.suffix


CONFIG_MAP = OwnedKind(
    "ConfigMap",
    "configmap",
    "-config",
    create=client.CoreV1Api.create_namespaced_config_map,
    read=client.CoreV1Api.read_namespaced_config_map,
    patch=client.CoreV1Api.patch_namespaced_config_map,
    delete=client.CoreV1Api.delete_namespaced_config_map,
)
SECRET = OwnedKind(
    "Secret",
    "secret",
    "-token",
    create=client.CoreV1Api.create_namespaced_secret,
    read=client.CoreV1Api.read_namespaced_secret,
    patch=client.CoreV1Api.patch_namespaced_secret,
    delete=client.CoreV1Api.delete_namespaced_secret,
)
# `manifests.config_map_name` / `secret_name`: the workload's name and these suffixes.
CONFIG_MAP_SUFFIX = CONFIG_MAP.suffix
SECRET_SUFFIX = SECRET.suffix


@dataclass(frozen=True)
class WorkloadKind:
    """How one job kind's attempt runs: which object, built how, read how, deleted how."""

    job_kind: str  # the spec's `kind` (`pretrain`, `tokenizer`, `data`)
    workload_type: type  # what `Backend.create` is given for it
    api_version: str  # `<group>/<version>`
    kind: str
    plural: str
    key: str  # the workload's key in what `render` returns
    render: Render
    phase: Callable[[Mapping[str, Any]], tuple[Phase, dict[str, Any] | None]]
    """The phase its `status` says, and the condition that says it."""
    propagation_policy: str
    watched: bool  # the informer keeps a cache of these; else `observe` lists them each time
    outcome_container: str | None  # whose termination message holds the trainer's outcome lines
    owns: tuple[OwnedKind, ...] = (CONFIG_MAP, SECRET)  # in the order they are created
    suspended: Callable[[Mapping[str, Any]], bool] = lambda obj: _spec_flag(obj, "suspend")
    """Whether the stored object is held suspended (by a queue, until admitted)."""
    pods_selector: Callable[[Mapping[str, Any]], str] = lambda obj: _attempt_pods(obj)
    """The label selector of its pods."""
    identity: Callable[[Mapping[str, Any]], tuple[int, int] | None] = identity
    """(job id, the number it is filed under: attempt, or an evaluation's step) from its labels."""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def owner_reference(self, name: str, uid: str) -> dict[str, Any]:
        """What names a workload of this kind as the controlling owner of what it mounts."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def _spec_flag(obj: Mapping[str, Any], *path: str) -> bool:
    node: Any = obj.get("spec") or {}
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node is True


def _attempt_pods(obj: Mapping[str, Any]) -> str:
    job_id, attempt = identity(obj) or (-1, -1)
    return attempt_selector(job_id, attempt)


PYTORCHJOB = WorkloadKind(
    job_kind=PRETRAIN_KIND,
    workload_type=Workload,
    api_version=PYTORCHJOB_API_VERSION,
    kind=PYTORCHJOB_KIND,
    plural="pytorchjobs",
    key="pytorchjob",
    render=render_manifests,
    phase=workload_phase,
    # Foreground: a deleted PyTorchJob stays (terminating) until its pods are gone, so the
    # attempt ends, and its token is revoked, only once its trainer has saved on SIGTERM and
    # registered that checkpoint (a paused job resumes from it). The next attempt is created
    # meanwhile all the same.
    propagation_policy="Foreground",
    watched=True,
    outcome_container=CONTAINER_NAME,
    suspended=lambda obj: _spec_flag(obj, "runPolicy", "suspend"),
)
TRAINJOB = WorkloadKind(
    job_kind=PRETRAIN_KIND,
    workload_type=Workload,
    api_version=TRAINJOB_API_VERSION,
    kind=TRAINJOB_KIND,
    plural="trainjobs",
    key="trainjob",
    render=render_trainjob_manifests,
    phase=trainjob_phase,
    # Foreground, as for a PyTorchJob: its JobSet's pods save on SIGTERM before it goes.
    propagation_policy="Foreground",
    watched=True,
    outcome_container=TRAINJOB_CONTAINER_NAME,
    # JobSet labels every pod with its name, which is the TrainJob's; the TrainJob's own
    # labels reach its JobSet and Jobs, not necessarily their pods.
    pods_selector=lambda obj: f"jobset.sigs.k8s.io/jobset-name={obj['metadata']['name']}",
)
BATCH_JOB = WorkloadKind(
    job_kind=TOKENIZER_KIND,
    workload_type=TokenizerWorkload,
    api_version=BATCH_JOB_API_VERSION,
    kind=BATCH_JOB_KIND,
    plural="jobs",
    key="job",
    render=render_tokenizer_manifests,
    phase=batch_job_phase,
    # Background: it goes at once, the collector removes its pod after it (the API's default
    # for Jobs would orphan the pod).
    propagation_policy="Background",
    watched=False,
    outcome_container=None,  # its result arrives through the API (`jobs.record_result`)
)

# A data job's attempt is the same batch Job, running the trainer's data preparation.
DATA_BATCH_JOB = replace(
    BATCH_JOB, job_kind=DATA_KIND, workload_type=DataWorkload, render=render_data_manifests
)


def _evaluation_pods(obj: Mapping[str, Any]) -> str:
    job_id, step = evaluation_identity(obj) or (-1, -1)
    return f"{JOB_ID_LABEL}={job_id},{EVALUATION_STEP_LABEL}={step}"


# A pretrain job's checkpoint evaluation: a batch Job of its own, filed by step, not attempt.
EVALUATION_BATCH_JOB = replace(
    BATCH_JOB,
    job_kind=EVALUATION_WORKLOAD_KIND,
    workload_type=EvaluationWorkload,
    render=render_evaluation_manifests,
    identity=evaluation_identity,
    pods_selector=_evaluation_pods,
)

WORKLOAD_KINDS: dict[str, WorkloadKind] = {
    row.job_kind: row for row in (PYTORCHJOB, BATCH_JOB, DATA_BATCH_JOB, EVALUATION_BATCH_JOB)
}
"""By the spec's job kind (and `evaluation` for a job's evaluations): the default table
(pretrain attempts as PyTorchJobs)."""

PRETRAIN_WORKLOADS: dict[str, WorkloadKind] = {
    "kubeflow-pytorchjob": PYTORCHJOB,
    "kubeflow-trainer": TRAINJOB,
}
"""What a pretrain attempt runs as, by `Settings.kubernetes_workload`."""


@dataclass(frozen=True)
class ReadKind:
    """An object the backend only reads (lists), by group, version and plural."""

    api_version: str
    kind: str
    plural: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


# Kueue's record of a queued workload (found by the `kueue.x-k8s.io/job-uid` label), whose
# conditions say why it waits.
KUEUE_WORKLOAD = ReadKind("kueue.x-k8s.io/v1beta1", "Workload", "workloads")
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


def workload_kinds(settings: Settings) -> dict[str, WorkloadKind]:
    """The table a backend with these settings walks: by the spec's job kind."""
    return WORKLOAD_KINDS | {PRETRAIN_KIND: PRETRAIN_WORKLOADS[settings.kubernetes_workload]}


def kind_of(
    workload: AnyWorkload, kinds: Mapping[str, WorkloadKind] = WORKLOAD_KINDS
) -> WorkloadKind:
    """The row of `kinds` that runs this workload."""
    for row in kinds.values():
        if isinstance(workload, row.workload_type):
            return row
    raise TypeError(f"no workload kind runs a {type(workload).__name__}")
