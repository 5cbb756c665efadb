"""What a training attempt's pods are, whichever Kubeflow kind runs them (`PyTorchJob`, `TrainJob`).

Both kinds run one pod per node holding the trainer under torchrun, mounting the attempt's
ConfigMap, its storage and scratch volumes, reading the ingest token from its Secret and the
object-store credentials from the Secrets the spec names. Kueue finds a workload to admit by
its labels, and admits only one created suspended.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from kubernetes import client as k8s

from service.controller.manifests.pod import (
    metadata,
    scratch,
    serializer,
    storage,
    token_env,
)
from service.controller.manifests.workloads import (
    CONFIG_DIR,
    EvaluationWorkload,
    Workload,
    config_map_name,
)
from service.settings import Settings

CONFIG_FILE = "trainer.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
GPU_RESOURCE = "nvidia.com/gpu"
# Where the trainer writes its outcome lines in a pod (its default `job.result_path`).
TERMINATION_LOG = "/dev/termination-log"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Names a Kueue WorkloadPriorityClass: the workload's place in the queue and what it may
# preempt. Not the pods' PriorityClass (`Settings.priority_class`), a separate object.
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"

# NCCL_SOCKET_IFNAME and the like are the cluster's business (set on nodes or by a webhook).
_GPU_ENV = {
    # Megatron-core orders its tensor-parallel communication on one CUDA stream.
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    "NCCL_DEBUG": "WARN",
    # A timed-out collective aborts the process instead of hanging the whole job.
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
}


def check_workload(workload: Workload) -> None:
    """ValueError unless the workload has machines and its config is for this very attempt."""
    if workload.nodes < 1 or workload.gpus_per_node < 1:
        raise ValueError(
            f"a workload needs at least one node and one process per node, got nodes "
            f"{workload.nodes} × gpus_per_node {workload.gpus_per_node}"
        )
    job = workload.trainer_config.get("job", {})
    if job.get("id") != str(workload.job_id) or job.get("attempt") != workload.attempt:
        raise ValueError(
            f"the trainer config is for job {job.get('id')!r} attempt {job.get('attempt')!r}, "
            f"not job {workload.job_id} attempt {workload.attempt}"
        )


def queue_of(workload: Workload, settings: Settings) -> str | None:
    """The Kueue LocalQueue that admits the workload: the job's own, else the install's."""
    return workload.queue or settings.scheduling_queue


def kueue_labels(workload: Workload, settings: Settings) -> dict[str, str]:
    """The labels Kueue admits a workload by: its queue, and its priority in the queue."""
    labels = {}
    if queue := queue_of(workload, settings):
        labels[KUEUE_QUEUE_LABEL] = queue
    if workload.priority:
        labels[KUEUE_PRIORITY_LABEL] = workload.priority
    return labels


def suspended(workload: Workload, settings: Settings) -> bool | None:
    """True when a queue is named: Kueue admits a workload by unsuspending it. None: unset."""
    return True if queue_of(workload, settings) else None


def volumes_and_mounts(
    workload: Workload, settings: Settings
) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """The config, shared-memory, storage and scratch volumes, and where the trainer mounts them."""
    volumes = [
        k8s.V1Volume(
            name="trainer-config",
            config_map=k8s.V1ConfigMapVolumeSource(name=config_map_name(workload)),
        ),
        # NCCL and DataLoader workers share memory through /dev/shm; Docker's default is 64 MiB.
        k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory")),
    ]
    mounts = [
        k8s.V1VolumeMount(name="trainer-config", mount_path=CONFIG_DIR, read_only=True),
        k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
    ]
    for extra_volumes, extra_mounts in (storage(settings), scratch()):
        volumes += extra_volumes
        mounts += extra_mounts
    return volumes, mounts


def env(workload: Workload) -> list[k8s.V1EnvVar]:
    """The trainer's environment: NCCL's settings on GPUs, and the ingest token."""
    variables = dict(_GPU_ENV) if workload.gpu_type != "cpu" else {}
    return [k8s.V1EnvVar(name=name, value=value) for name, value in variables.items()] + [
        token_env(workload)
    ]


def env_from(workload: Workload | EvaluationWorkload) -> list[k8s.V1EnvFromSource] | None:
    """Object-store credentials, from the Secrets the spec names: never in the spec or config."""
    sources = [
        k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name))
        for name in workload.env_secrets
    ]
    return sources or None


def resources(workload: Workload) -> k8s.V1ResourceRequirements:
    """GPUs per node; on CPU, gpus_per_node counts training processes: a core each, and their memory."""
    if workload.gpu_type != "cpu":
        return k8s.V1ResourceRequirements(limits={GPU_RESOURCE: str(workload.gpus_per_node)})
    requests = {"cpu": str(workload.gpus_per_node)}
    if workload.gpu_memory_gib:
        requests["memory"] = f"{math.ceil(workload.gpu_memory_gib * workload.gpus_per_node)}Gi"
    return k8s.V1ResourceRequirements(requests=requests)


def config_map(
    workload: Workload, settings: Settings, owners: list[k8s.V1OwnerReference] | None
) -> k8s.V1ConfigMap:
    """The attempt's trainer.json, without the ingest token (the trainer reads it from the Secret)."""
    config = copy.deepcopy(workload.trainer_config)
    config.get("metrics", {}).pop("token", None)
    return k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=metadata(workload, settings, config_map_name(workload), owners),
        data={CONFIG_FILE: json.dumps(config, indent=2) + "\n"},
        # One per attempt and never edited: immutable spares the kubelets a watch.
        immutable=True,
    )


def as_json(objects: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The kubernetes client's models as plain JSON mappings, by manifest key."""
    return {key: serializer().sanitize_for_serialization(obj) for key, obj in objects.items()}
