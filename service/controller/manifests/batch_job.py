"""A tokenizer or data job's attempt on Kubernetes: a batch/v1 Job on one CPU pod, its ConfigMap
and Secret. The two differ only in the module they run, the config file and the names."""

from __future__ import annotations

import math
from typing import Any

from kubernetes import client as k8s

from service.controller.manifests.batch_commands import (
    TOKENIZER_TTL_AFTER_FINISHED_S,
    batch_command,
    batch_config_json,
    batch_kind,
)
from service.controller.manifests.pod import (
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
    CONFIG_DIR,
    BatchWorkload,
    config_map_name,
    workload_labels,
)
from service.settings import Settings

BATCH_JOB_API_VERSION = "batch/v1"
BATCH_JOB_KIND = "Job"


def render_tokenizer_manifests(
    workload: BatchWorkload, settings: Settings, *, owner_uid: str | None = None
) -> dict[str, dict[str, Any]]:
    """The attempt's batch/v1 Job, ConfigMap and Secret as plain JSON mappings (a data
    workload's too: `render_data_manifests` is this).

    As with a PyTorchJob: create the Job first, then render again with its `metadata.uid` as
    `owner_uid`, so that the ConfigMap and Secret go when it is deleted.
    """
    kind = batch_kind(workload)
    if workload.cpu < 1 or workload.memory_gib <= 0:
        raise ValueError(
            f"a {kind.what} workload needs CPU and memory, got cpu {workload.cpu}, "
            f"memory_gib {workload.memory_gib}"
        )
    owners = owned_by(BATCH_JOB_API_VERSION, BATCH_JOB_KIND, workload.name, owner_uid)
    config = k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=metadata(workload, settings, config_map_name(workload), owners, kind.labels),
        data={kind.config_file: batch_config_json(workload)},
        immutable=True,
    )
    objects = {
        "job": _batch_job(workload, settings),
        "configmap": config,
        "secret": token_secret(workload, settings, owners, kind.labels),
    }
    return {key: serializer().sanitize_for_serialization(obj) for key, obj in objects.items()}


render_data_manifests = render_tokenizer_manifests


def _batch_job(workload: BatchWorkload, settings: Settings) -> k8s.V1Job:
    kind = batch_kind(workload)
    volumes = [
        k8s.V1Volume(
            name=f"{kind.what}-config",
            config_map=k8s.V1ConfigMapVolumeSource(name=config_map_name(workload)),
        )
    ]
    mounts = [
        k8s.V1VolumeMount(name=f"{kind.what}-config", mount_path=CONFIG_DIR, read_only=True)
    ]
    for extra_volumes, extra_mounts in (storage(settings), scratch()):
        volumes += extra_volumes
        mounts += extra_mounts
    amounts = {"cpu": str(workload.cpu), "memory": f"{math.ceil(workload.memory_gib * 1024)}Mi"}
    container = k8s.V1Container(
        name=kind.container,
        image=settings.trainer_image,
        command=batch_command(
            workload, python="python", config_path=f"{CONFIG_DIR}/{kind.config_file}"
        ),
        env=[
            # The tokenizers library sizes its thread pool by the node's cores, not the limit.
            k8s.V1EnvVar(name="RAYON_NUM_THREADS", value=str(workload.cpu)),
            token_env(workload),
        ],
        # Requests equal to limits: a memory-hungry batch job is not the first one evicted.
        resources=k8s.V1ResourceRequirements(requests=amounts, limits=dict(amounts)),
        volume_mounts=mounts,
        # A failure's last log lines (the library's "error: ...") become the pod's message,
        # which the controller quotes as the attempt's reason.
        termination_message_policy="FallbackToLogsOnError",
        security_context=container_security_context(),
    )
    labels = workload_labels(workload) | kind.labels
    return k8s.V1Job(
        api_version=BATCH_JOB_API_VERSION,
        kind=BATCH_JOB_KIND,
        metadata=metadata(workload, settings, workload.name, extra_labels=kind.labels),
        spec=k8s.V1JobSpec(
            # Retries belong to the controller, as for PyTorchJobs: one pod, never restarted.
            backoff_limit=0,
            ttl_seconds_after_finished=TOKENIZER_TTL_AFTER_FINISHED_S,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(
                    restart_policy="Never",
                    containers=[container],
                    automount_service_account_token=False,
                    security_context=pod_security_context(),
                    volumes=volumes,
                    node_selector=dict(settings.node_selector) or None,
                    tolerations=[toleration(t) for t in settings.tolerations] or None,
                ),
            ),
        ),
    )
