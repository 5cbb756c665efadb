"""Kubernetes manifests of one attempt as Kubeflow Trainer v2 runs it: a `TrainJob`, its
ConfigMap and its Secret.

A `TrainJob` (`trainer.kubeflow.org/v1alpha1`) names a runtime (`runtimeRef`, a
`ClusterTrainingRuntime` such as the chart's `torch-distributed`) whose JobSet template holds
what every attempt's pods share and a TrainJob cannot say: the security contexts, the
termination message path, the grace period after SIGTERM, no service account token. The
TrainJob brings what is the attempt's own through the API's models (`kubeflow-trainer-api`):
the image, torchrun's command, nodes and processes per node, resources, the token's
environment, and, through `podSpecOverrides` on the runtime's `node` job, the volumes and
their mounts, node selector and tolerations. Kueue admits it by its labels and `spec.suspend`.

The trainer reads its topology from what the runtime's torch plugin injects into the `node`
container (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT),
which torchrun takes as the defaults of its flags.

The models are release 2.0.1's, the one whose `TrainJobSpec` has the vendored CRD's
`podSpecOverrides` (later releases replace it). Its `ContainerOverride` lacks the CRD's
`envFrom`: `_with_env_from` adds the Secrets the spec names, as the kubernetes client's model
serializes them, and the tests validate the result against the CRD.
"""

from __future__ import annotations

from typing import Any

from kubeflow_trainer_api.models import (
    IoK8sApiCoreV1EnvVar,
    IoK8sApiCoreV1ResourceRequirements,
    IoK8sApiCoreV1Toleration,
    IoK8sApiCoreV1Volume,
    IoK8sApiCoreV1VolumeMount,
    IoK8sApimachineryPkgApisMetaV1ObjectMeta,
    IoK8sApimachineryPkgUtilIntstrIntOrString,
    TrainerV1alpha1ContainerOverride,
    TrainerV1alpha1PodSpecOverride,
    TrainerV1alpha1PodSpecOverrideTargetJob,
    TrainerV1alpha1RuntimeRef,
    TrainerV1alpha1Trainer,
    TrainerV1alpha1TrainJob,
    TrainerV1alpha1TrainJobSpec,
)

from service.controller.manifests.pod import owned_by, serializer, token_secret, toleration
from service.controller.manifests.trainer_pod import (
    CONFIG_PATH,
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

TRAINJOB_GROUP = "trainer.kubeflow.org"
TRAINJOB_API_VERSION = f"{TRAINJOB_GROUP}/v1alpha1"
TRAINJOB_KIND = "TrainJob"
RUNTIME_KIND = "ClusterTrainingRuntime"
# The torch runtime's replicated job and its trainer container are both called `node`.
TRAINJOB_NODE_JOB = "node"
TRAINJOB_CONTAINER_NAME = "node"
# torchrun takes every flag it is not given from PET_<FLAG>, which the runtime sets.
TRAINJOB_COMMAND = ["python", "-m", "torch.distributed.run", "-m", "trainer.train", "--config", CONFIG_PATH]


def render_trainjob_manifests(
    workload: Workload, settings: Settings, *, owner_uid: str | None = None
) -> dict[str, dict[str, Any]]:
    """The attempt's TrainJob, ConfigMap and Secret as plain JSON mappings.

    As for a PyTorchJob: create the TrainJob first, then render again with its `metadata.uid`
    as `owner_uid`, and the ConfigMap and Secret go with it.
    """
    check_workload(workload)
    owners = owned_by(TRAINJOB_API_VERSION, TRAINJOB_KIND, workload.name, owner_uid)
    owned = as_json(
        {
            "configmap": config_map(workload, settings, owners),
            "secret": token_secret(workload, settings, owners),
        }
    )
    trainjob = _with_env_from(_trainjob(workload, settings).to_dict(), workload)
    return {"trainjob": trainjob, **owned}


def _trainjob(workload: Workload, settings: Settings) -> TrainerV1alpha1TrainJob:
    volumes, mounts = volumes_and_mounts(workload, settings)
    node = TrainerV1alpha1PodSpecOverride(
        target_jobs=[TrainerV1alpha1PodSpecOverrideTargetJob(name=TRAINJOB_NODE_JOB)],
        containers=[
            TrainerV1alpha1ContainerOverride(
                name=TRAINJOB_CONTAINER_NAME,
                volume_mounts=[_model(IoK8sApiCoreV1VolumeMount, m) for m in mounts],
            )
        ],
        volumes=[_model(IoK8sApiCoreV1Volume, v) for v in volumes],
        node_selector=dict(settings.node_selector) or None,
        tolerations=[_model(IoK8sApiCoreV1Toleration, toleration(t)) for t in settings.tolerations]
        or None,
    )
    labels = workload_labels(workload)
    return TrainerV1alpha1TrainJob(
        api_version=TRAINJOB_API_VERSION,
        kind=TRAINJOB_KIND,
        metadata=IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=workload.name,
            namespace=settings.namespace,
            labels=labels | kueue_labels(workload, settings),
        ),
        spec=TrainerV1alpha1TrainJobSpec(
            runtime_ref=TrainerV1alpha1RuntimeRef(
                api_group=TRAINJOB_GROUP, kind=RUNTIME_KIND, name=settings.trainer_runtime
            ),
            trainer=TrainerV1alpha1Trainer(
                image=settings.trainer_image,
                command=list(TRAINJOB_COMMAND),
                num_nodes=workload.nodes,
                num_proc_per_node=IoK8sApimachineryPkgUtilIntstrIntOrString(workload.gpus_per_node),
                resources_per_node=_model(IoK8sApiCoreV1ResourceRequirements, resources(workload)),
                env=[_model(IoK8sApiCoreV1EnvVar, e) for e in env(workload)],
            ),
            # On the JobSet and Jobs it creates: the attempt's objects all say whose they are.
            labels=labels,
            pod_spec_overrides=[node],
            # Kueue admits a queued TrainJob by unsuspending it.
            suspend=suspended(workload, settings),
        ),
    )


def _model(model: type, obj: Any) -> Any:
    """A kubernetes client model as the Trainer API's model of the same object (validated)."""
    return model.from_dict(serializer().sanitize_for_serialization(obj))


def _with_env_from(trainjob: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """The `node` container's `envFrom`, which the CRD has and the 2.0.1 models lack."""
    sources = env_from(workload)
    if sources:
        for override in trainjob["spec"]["podSpecOverrides"]:
            for container in override.get("containers", []):
                if container["name"] == TRAINJOB_CONTAINER_NAME:
                    container["envFrom"] = serializer().sanitize_for_serialization(sources)
    return trainjob
