"""The tokenizer's attempt on Kubernetes: a batch/v1 Job on one CPU pod, its ConfigMap and Secret."""

from __future__ import annotations

import json
import math
from typing import Any

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
    TokenizerWorkload,
    config_map_name,
    workload_labels,
)
from service.settings import Settings

BATCH_JOB_API_VERSION = "batch/v1"
BATCH_JOB_KIND = "Job"
TOKENIZER_CONTAINER_NAME = "tokenizer"
TOKENIZER_CONFIG_FILE = "tokenizer.json"
TOKENIZER_CONFIG_PATH = f"{CONFIG_DIR}/{TOKENIZER_CONFIG_FILE}"
RESULT_FILE = "result.json"
TOKENIZER_LABELS = {"app.kubernetes.io/name": "pretrain-tokenizer", "pretrain.io/kind": "tokenizer"}
# A finished Job (and its pod, with the log) stays this long for a post-mortem; the controller
# needs it only until it has seen how it ended, which takes seconds unless it is down for days.
TOKENIZER_TTL_AFTER_FINISHED_S = 7 * 24 * 3600
# Run the job keeping its result JSON beside the tokenizer, then report that result; each value
# is a positional parameter, so no path or URL is ever parsed by the shell.
_TOKENIZER_SCRIPT = (
    'set -e; mkdir -p "$3"; '
    '"$1" -m trainer.tokenizer.cli job "$2" > "$3/result.json.tmp"; '
    'mv "$3/result.json.tmp" "$3/result.json"; '
    'exec "$1" -m trainer.job_result "$3/result.json" --url "$4" --job "$5" --attempt "$6"'
)


def tokenizer_command(workload: TokenizerWorkload, *, python: str, config_path: str) -> list[str]:
    """The tokenizer workload's command: run the job, keep its result, report it to the API.

    It exits 0 only once the service has taken the result, so a succeeded workload always has
    its result on record; the local backend runs the same command with its own Python.
    """
    return [
        "sh",
        "-c",
        _TOKENIZER_SCRIPT,
        "tokenizer-job",
        python,
        config_path,
        workload.output_dir,
        workload.ingest_url,
        str(workload.job_id),
        str(workload.attempt),
    ]


def render_tokenizer_manifests(
    workload: TokenizerWorkload, settings: Settings, *, owner_uid: str | None = None
) -> dict[str, dict[str, Any]]:
    """The attempt's batch/v1 Job, ConfigMap and Secret as plain JSON mappings.

    As with a PyTorchJob: create the Job first, then render again with its `metadata.uid` as
    `owner_uid`, so that the ConfigMap and Secret go when it is deleted.
    """
    if workload.cpu < 1 or workload.memory_gib <= 0:
        raise ValueError(
            f"a tokenizer workload needs CPU and memory, got cpu {workload.cpu}, "
            f"memory_gib {workload.memory_gib}"
        )
    owners = owned_by(BATCH_JOB_API_VERSION, BATCH_JOB_KIND, workload.name, owner_uid)
    config = k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=metadata(workload, settings, config_map_name(workload), owners, TOKENIZER_LABELS),
        data={TOKENIZER_CONFIG_FILE: json.dumps(workload.tokenizer_config, indent=2) + "\n"},
        immutable=True,
    )
    objects = {
        "job": _batch_job(workload, settings),
        "configmap": config,
        "secret": token_secret(workload, settings, owners, TOKENIZER_LABELS),
    }
    return {kind: serializer().sanitize_for_serialization(obj) for kind, obj in objects.items()}


def _batch_job(workload: TokenizerWorkload, settings: Settings) -> k8s.V1Job:
    volumes = [
        k8s.V1Volume(
            name="tokenizer-config",
            config_map=k8s.V1ConfigMapVolumeSource(name=config_map_name(workload)),
        )
    ]
    mounts = [k8s.V1VolumeMount(name="tokenizer-config", mount_path=CONFIG_DIR, read_only=True)]
    for extra_volumes, extra_mounts in (storage(settings), scratch()):
        volumes += extra_volumes
        mounts += extra_mounts
    amounts = {"cpu": str(workload.cpu), "memory": f"{math.ceil(workload.memory_gib * 1024)}Mi"}
    container = k8s.V1Container(
        name=TOKENIZER_CONTAINER_NAME,
        image=settings.trainer_image,
        command=tokenizer_command(workload, python="python", config_path=TOKENIZER_CONFIG_PATH),
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
    labels = workload_labels(workload) | TOKENIZER_LABELS
    return k8s.V1Job(
        api_version=BATCH_JOB_API_VERSION,
        kind=BATCH_JOB_KIND,
        metadata=metadata(workload, settings, workload.name, extra_labels=TOKENIZER_LABELS),
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
