"""Kubernetes manifests of one attempt: a Kubeflow `PyTorchJob`, its ConfigMap and its Secret.

The PyTorchJob (`kubeflow.org/v1`, Training Operator) runs one pod per node, each starting
`torchrun` over the trainer; the ConfigMap carries the rendered trainer config without the
ingest token, which lives only in the Secret and reaches the trainer as the environment
variable `PRETRAIN_INGEST_TOKEN`. Names are deterministic, so creating them is idempotent.

Retries belong to the controller, not the operator: replicas restart `Never` and the run
policy's `backoffLimit` is 0, so a failed pod fails the attempt at once; the controller then
decides, from the reason and the retry budget, whether to open attempt N+1 (resuming from the
newest verified checkpoint, with skip ranges) or to fail the job. An in-place restart would
rerun the attempt's config from its old `resume_from` behind the controller's back.

Everything PyTorchJob-specific sits behind `render_manifests`, so that a Trainer v2
`TrainJob` renderer can sit beside it later.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from kubeflow.training import (
    KubeflowOrgV1PyTorchJob,
    KubeflowOrgV1PyTorchJobSpec,
    KubeflowOrgV1ReplicaSpec,
    KubeflowOrgV1RunPolicy,
    KubeflowOrgV1SchedulingPolicy,
)
from kubernetes import client as k8s

from service.controller.manifests.pod import (
    CONFIG_DIR,
    container_security_context,
    metadata,
    owned_by,
    pod_security_context,
    scratch,
    serializer,
    storage,
    token_env,
    token_secret,
    toleration,
)
from service.controller.manifests.workloads import (
    TERMINATION_GRACE_S,
    Workload,
    config_map_name,
    workload_labels,
)
from service.settings import Settings

PYTORCHJOB_API_VERSION = "kubeflow.org/v1"
PYTORCHJOB_KIND = "PyTorchJob"
# The Training Operator finds the trainer by this container name and the master port by this
# port name (its defaults: container `pytorch`, port `pytorchjob-port` 23456).
CONTAINER_NAME = "pytorch"
MASTER_PORT_NAME = "pytorchjob-port"
MASTER_PORT = 23456

CONFIG_FILE = "trainer.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
GPU_RESOURCE = "nvidia.com/gpu"
# Where the trainer writes its outcome lines in a pod (its default `job.result_path`).
TERMINATION_LOG = "/dev/termination-log"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# torchrun reads its topology from what the operator injects into the `pytorch` container:
# PET_NNODES, PET_NPROC_PER_NODE (from nprocPerNode), PET_NODE_RANK, MASTER_ADDR, MASTER_PORT.
# Kubernetes expands $(VAR) from the container's environment; MASTER_* rather than PET_MASTER_*
# because every operator release sets them.
TRAINER_COMMAND = [
    "python",
    "-m",
    "torch.distributed.run",
    "--nnodes=$(PET_NNODES)",
    "--nproc-per-node=$(PET_NPROC_PER_NODE)",
    "--node-rank=$(PET_NODE_RANK)",
    "--master-addr=$(MASTER_ADDR)",
    "--master-port=$(MASTER_PORT)",
    "-m",
    "trainer.train",
    "--config",
    CONFIG_PATH,
]
# NCCL_SOCKET_IFNAME and the like are the cluster's business (set on nodes or by a webhook).
_GPU_ENV = {
    # Megatron-core orders its tensor-parallel communication on one CUDA stream.
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    "NCCL_DEBUG": "WARN",
    # A timed-out collective aborts the process instead of hanging the whole job.
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
}


def render_manifests(
    workload: Workload, settings: Settings, *, owner_uid: str | None = None
) -> dict[str, dict[str, Any]]:
    """The attempt's PyTorchJob, ConfigMap and Secret as plain JSON mappings.

    Create the PyTorchJob first, then render again with its `metadata.uid` as `owner_uid`:
    the ConfigMap and Secret then belong to it and go when it is deleted.
    """
    _check(workload)
    owners = owned_by(PYTORCHJOB_API_VERSION, PYTORCHJOB_KIND, workload.name, owner_uid)
    objects = {
        "pytorchjob": _pytorchjob(workload, settings),
        "configmap": _config_map(workload, settings, owners),
        "secret": token_secret(workload, settings, owners),
    }
    return {kind: serializer().sanitize_for_serialization(obj) for kind, obj in objects.items()}


def _check(workload: Workload) -> None:
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


def _pytorchjob(workload: Workload, settings: Settings) -> KubeflowOrgV1PyTorchJob:
    replicas = {
        "Master": KubeflowOrgV1ReplicaSpec(
            replicas=1, restart_policy="Never", template=_pod_template(workload, settings)
        )
    }
    if workload.nodes > 1:
        replicas["Worker"] = KubeflowOrgV1ReplicaSpec(
            replicas=workload.nodes - 1,
            restart_policy="Never",
            template=_pod_template(workload, settings),
        )
    scheduling = None
    if settings.scheduling_queue or settings.priority_class:
        # Gang scheduling (Volcano, scheduler-plugins): start all nodes together or none.
        scheduling = KubeflowOrgV1SchedulingPolicy(
            queue=settings.scheduling_queue,
            priority_class=settings.priority_class,
            min_available=workload.nodes,
        )
    # Kueue admits a PyTorchJob by this label rather than by schedulingPolicy.queue.
    queue_label = (
        {KUEUE_QUEUE_LABEL: settings.scheduling_queue} if settings.scheduling_queue else {}
    )
    return KubeflowOrgV1PyTorchJob(
        api_version=PYTORCHJOB_API_VERSION,
        kind=PYTORCHJOB_KIND,
        metadata=metadata(workload, settings, workload.name, extra_labels=queue_label),
        spec=KubeflowOrgV1PyTorchJobSpec(
            # A string in the CRD (it also takes auto/cpu/gpu); an integer is refused.
            nproc_per_node=str(workload.gpus_per_node),
            pytorch_replica_specs=replicas,
            run_policy=KubeflowOrgV1RunPolicy(
                # Running: free the GPUs of peers still blocked in a collective once one pod
                # fails, but keep failed pods (and their logs) for the post-mortem.
                clean_pod_policy="Running",
                backoff_limit=0,
                scheduling_policy=scheduling,
            ),
        ),
    )


def _pod_template(workload: Workload, settings: Settings) -> k8s.V1PodTemplateSpec:
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
    env = [k8s.V1EnvVar(name=name, value=value) for name, value in _env(workload).items()]
    env.append(token_env(workload))
    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=settings.trainer_image,
        command=list(TRAINER_COMMAND),
        env=env,
        # Object-store credentials, from the Secret the spec names: never in the spec or config.
        env_from=[
            k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name)) for name in workload.env_secrets
        ]
        or None,
        ports=[
            k8s.V1ContainerPort(name=MASTER_PORT_NAME, container_port=MASTER_PORT, protocol="TCP")
        ],
        resources=_resources(workload),
        volume_mounts=mounts,
        # Each trainer rank appends its outcome line (outcome.py) to the termination log; the
        # log's tail stands in when it wrote none (killed, or failed before it could).
        termination_message_path=TERMINATION_LOG,
        termination_message_policy="FallbackToLogsOnError",
        security_context=container_security_context(),
    )
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=workload_labels(workload)),
        spec=k8s.V1PodSpec(
            containers=[container],
            # A user's job has no business with the Kubernetes API.
            automount_service_account_token=False,
            security_context=pod_security_context(),
            volumes=volumes,
            node_selector=dict(settings.node_selector) or None,
            tolerations=[toleration(t) for t in settings.tolerations] or None,
            priority_class_name=settings.priority_class,
            termination_grace_period_seconds=TERMINATION_GRACE_S,
        ),
    )


def _env(workload: Workload) -> dict[str, str]:
    return dict(_GPU_ENV) if workload.gpu_type != "cpu" else {}


def _resources(workload: Workload) -> k8s.V1ResourceRequirements:
    if workload.gpu_type != "cpu":
        return k8s.V1ResourceRequirements(limits={GPU_RESOURCE: str(workload.gpus_per_node)})
    # On CPU, gpus_per_node counts training processes: a core each, and their memory.
    requests = {"cpu": str(workload.gpus_per_node)}
    if workload.gpu_memory_gib:
        requests["memory"] = f"{math.ceil(workload.gpu_memory_gib * workload.gpus_per_node)}Gi"
    return k8s.V1ResourceRequirements(requests=requests)


def _config_map(
    workload: Workload, settings: Settings, owners: list[k8s.V1OwnerReference] | None
) -> k8s.V1ConfigMap:
    config = copy.deepcopy(workload.trainer_config)
    # The token lives only in the Secret; the trainer reads it from PRETRAIN_INGEST_TOKEN.
    config.get("metrics", {}).pop("token", None)
    return k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=metadata(workload, settings, config_map_name(workload), owners),
        data={CONFIG_FILE: json.dumps(config, indent=2) + "\n"},
        # One per attempt and never edited: immutable spares the kubelets a watch.
        immutable=True,
    )
