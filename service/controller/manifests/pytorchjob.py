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

Everything PyTorchJob-specific sits behind `render_manifests`; what its pods share with a
Trainer v2 `TrainJob`'s is `trainer_pod`'s.
"""

from __future__ import annotations

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
    container_security_context,
    metadata,
    owned_by,
    pod_security_context,
    token_secret,
    toleration,
)
from service.controller.manifests.trainer_pod import (
    CONFIG_PATH,
    TERMINATION_LOG,
    as_json,
    check_workload,
    config_map,
    env,
    env_from,
    kueue_labels,
    resources,
    suspended,
    volumes_and_mounts,
)
from service.controller.manifests.workloads import Workload, workload_labels
from service.settings import Settings

PYTORCHJOB_API_VERSION = "kubeflow.org/v1"
PYTORCHJOB_KIND = "PyTorchJob"
# The Training Operator finds the trainer by this container name and the master port by this
# port name (its defaults: container `pytorch`, port `pytorchjob-port` 23456).
CONTAINER_NAME = "pytorch"
MASTER_PORT_NAME = "pytorchjob-port"
MASTER_PORT = 23456

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


def render_manifests(
    workload: Workload, settings: Settings, *, owner_uid: str | None = None
) -> dict[str, dict[str, Any]]:
    """The attempt's PyTorchJob, ConfigMap and Secret as plain JSON mappings.

    Create the PyTorchJob first, then render again with its `metadata.uid` as `owner_uid`:
    the ConfigMap and Secret then belong to it and go when it is deleted.
    """
    check_workload(workload)
    owners = owned_by(PYTORCHJOB_API_VERSION, PYTORCHJOB_KIND, workload.name, owner_uid)
    return as_json(
        {
            "pytorchjob": _pytorchjob(workload, settings),
            "configmap": config_map(workload, settings, owners),
            "secret": token_secret(workload, settings, owners),
        }
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
    return KubeflowOrgV1PyTorchJob(
        api_version=PYTORCHJOB_API_VERSION,
        kind=PYTORCHJOB_KIND,
        # Kueue admits a PyTorchJob by its labels rather than by schedulingPolicy.queue.
        metadata=metadata(
            workload, settings, workload.name, extra_labels=kueue_labels(workload, settings)
        ),
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
                # Kueue admits a queued PyTorchJob by unsuspending it.
                suspend=suspended(workload, settings),
            ),
        ),
    )


def _pod_template(workload: Workload, settings: Settings) -> k8s.V1PodTemplateSpec:
    volumes, mounts = volumes_and_mounts(workload, settings)
    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=settings.trainer_image,
        command=list(TRAINER_COMMAND),
        env=env(workload),
        env_from=env_from(workload),
        ports=[
            k8s.V1ContainerPort(name=MASTER_PORT_NAME, container_port=MASTER_PORT, protocol="TCP")
        ],
        resources=resources(workload),
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
            termination_grace_period_seconds=workload.termination_grace_s,
        ),
    )
