"""A checkpoint's benchmark evaluation on Kubernetes: a batch/v1 Job of its own (never a
container of the training pods), with the evaluation's own resources, its ConfigMap (the
training run's config and the benchmarks) and the Secret of its reporting token."""

from __future__ import annotations

import math
from typing import Any

from kubernetes import client as k8s

from service.controller.manifests.batch_commands import (
    EVALUATION_CONTAINER_NAME,
    EVALUATION_LABELS,
    TOKENIZER_TTL_AFTER_FINISHED_S,
    evaluation_command,
    evaluation_config_files,
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
from service.controller.manifests.trainer_pod import GPU_RESOURCE, env_from
from service.controller.manifests.workloads import (
    CONFIG_DIR,
    EvaluationWorkload,
    config_map_name,
    workload_labels,
)
from service.settings import Settings

BATCH_JOB_API_VERSION = "batch/v1"
BATCH_JOB_KIND = "Job"


def render_evaluation_manifests(
    workload: EvaluationWorkload, settings: Settings, *, owner_uid: str | None = None
) -> dict[str, dict[str, Any]]:
    """The evaluation's batch/v1 Job, ConfigMap and Secret as plain JSON mappings; rendered
    again with the Job's uid as `owner_uid` so that the other two go with it."""
    if workload.cpu < 1 or workload.memory_gib <= 0:
        raise ValueError(
            f"an evaluation needs CPU and memory, got cpu {workload.cpu}, "
            f"memory_gib {workload.memory_gib}"
        )
    owners = owned_by(BATCH_JOB_API_VERSION, BATCH_JOB_KIND, workload.name, owner_uid)
    config = k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=metadata(workload, settings, config_map_name(workload), owners, EVALUATION_LABELS),
        data=evaluation_config_files(workload),
        immutable=True,
    )
    objects = {
        "job": _evaluation_job(workload, settings),
        "configmap": config,
        "secret": token_secret(workload, settings, owners, EVALUATION_LABELS),
    }
    return {key: serializer().sanitize_for_serialization(obj) for key, obj in objects.items()}


def _evaluation_job(workload: EvaluationWorkload, settings: Settings) -> k8s.V1Job:
    volumes = [
        k8s.V1Volume(
            name="evaluation-config",
            config_map=k8s.V1ConfigMapVolumeSource(name=config_map_name(workload)),
        )
    ]
    mounts = [k8s.V1VolumeMount(name="evaluation-config", mount_path=CONFIG_DIR, read_only=True)]
    for extra_volumes, extra_mounts in (storage(settings), scratch()):
        volumes += extra_volumes
        mounts += extra_mounts
    amounts = {"cpu": str(workload.cpu), "memory": f"{math.ceil(workload.memory_gib * 1024)}Mi"}
    if workload.gpus:
        amounts[GPU_RESOURCE] = str(workload.gpus)
    container = k8s.V1Container(
        name=EVALUATION_CONTAINER_NAME,
        image=settings.trainer_image,
        command=evaluation_command(workload, python="python", config_dir=CONFIG_DIR),
        env=[
            k8s.V1EnvVar(name="OMP_NUM_THREADS", value=str(workload.cpu)),
            # lm-eval and Hugging Face read only what is on the volumes: never the hub.
            k8s.V1EnvVar(name="HF_HUB_OFFLINE", value="1"),
            k8s.V1EnvVar(name="HF_DATASETS_OFFLINE", value="1"),
            token_env(workload),
        ],
        # s3:// benchmark items are read with the job's data credentials, as its sources are.
        env_from=env_from(workload),
        resources=k8s.V1ResourceRequirements(requests=amounts, limits=dict(amounts)),
        volume_mounts=mounts,
        # The runner's one-line reason becomes the pod's message, quoted on the failed rows.
        termination_message_policy="FallbackToLogsOnError",
        security_context=container_security_context(),
    )
    return k8s.V1Job(
        api_version=BATCH_JOB_API_VERSION,
        kind=BATCH_JOB_KIND,
        metadata=metadata(workload, settings, workload.name, extra_labels=EVALUATION_LABELS),
        spec=k8s.V1JobSpec(
            # One try: a failed evaluation is recorded, never retried behind the user's back.
            backoff_limit=0,
            ttl_seconds_after_finished=TOKENIZER_TTL_AFTER_FINISHED_S,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=workload_labels(workload) | EVALUATION_LABELS),
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
