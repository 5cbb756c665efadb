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

import base64
import copy
import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from kubeflow.training import (
    ApiClient,
    KubeflowOrgV1PyTorchJob,
    KubeflowOrgV1PyTorchJobSpec,
    KubeflowOrgV1ReplicaSpec,
    KubeflowOrgV1RunPolicy,
    KubeflowOrgV1SchedulingPolicy,
)
from kubernetes import client as k8s

from service.admission import OverMemory, admit
from service.controller.tokenizer_config import render_tokenizer_config
from service.controller.trainer_config import render_trainer_config
from service.settings import Settings
from service.spec import ValidatedTokenizerSpec, parse_spec_text

PYTORCHJOB_API_VERSION = "kubeflow.org/v1"
PYTORCHJOB_KIND = "PyTorchJob"
# The Training Operator finds the trainer by this container name and the master port by this
# port name (its defaults: container `pytorch`, port `pytorchjob-port` 23456).
CONTAINER_NAME = "pytorch"
MASTER_PORT_NAME = "pytorchjob-port"
MASTER_PORT = 23456
# Pod names add `-master-0` / `-worker-<N>` to the PyTorchJob's name; 45 leaves room for
# ten thousand workers inside the 63 characters of a DNS-1123 label.
MAX_WORKLOAD_NAME_LENGTH = 45
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

CONFIG_DIR = "/etc/pretrain"
CONFIG_FILE = "trainer.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
TOKEN_KEY = "token"
TOKEN_ENV = "PRETRAIN_INGEST_TOKEN"
GPU_RESOURCE = "nvidia.com/gpu"
# Where the trainer writes its outcome lines in a pod (its default `job.result_path`).
TERMINATION_LOG = "/dev/termination-log"
# The trainer saves a checkpoint on SIGTERM before it exits; the default 30 s cuts that short.
TERMINATION_GRACE_S = 300
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

# The checkpoint volume's mount path when settings leave it to the backend (see settings.py).
POD_CHECKPOINT_ROOT = "/checkpoints"
REVIEW_JOB_ID = 0
REVIEW_TOKEN = "<minted at launch>"


@dataclass(frozen=True)
class Workload:
    """What one attempt runs: the rendered trainer config and the machines it runs on."""

    job_id: int
    job_name: str
    attempt: int
    trainer_config: dict[str, Any]
    ingest_token: str | None
    nodes: int
    gpus_per_node: int
    gpu_type: str
    gpu_memory_gib: float | None = None
    """Memory of one GPU, or of one CPU process: sizes the memory request of CPU pods."""

    @property
    def name(self) -> str:
        """The PyTorchJob's name; the ConfigMap and Secret are named after it."""
        return workload_name(self.job_name, self.job_id, self.attempt)


def workload_name(job_name: str, job_id: int, attempt: int) -> str:
    """`<name>-<id>-a<attempt>`, the name part shortened so the whole fits 45 characters."""
    if job_id < 0 or attempt < 0:
        raise ValueError(f"job id {job_id} and attempt {attempt} must not be negative")
    if not _DNS_LABEL.match(job_name) or not job_name[0].isalpha():
        raise ValueError(
            f"job name {job_name!r} is not a DNS-1123 label starting with a letter "
            "(lowercase letters, digits and '-')"
        )
    suffix = f"-{job_id}-a{attempt}"
    room = MAX_WORKLOAD_NAME_LENGTH - len(suffix)
    stem = job_name[:room].rstrip("-")
    if room < 1 or not stem:
        raise ValueError(f"job id {job_id} and attempt {attempt} leave no room for a name")
    return stem + suffix


@dataclass(frozen=True)
class TokenizerWorkload:
    """What one attempt of a tokenizer job runs: the tokenizer library's job, on one CPU pod."""

    job_id: int
    job_name: str
    attempt: int
    tokenizer_config: dict[str, Any]
    """The `run_tokenizer_job` config (`tokenizer_config.render_tokenizer_config`)."""
    ingest_token: str | None
    ingest_url: str
    """The API as the workload reaches it: it reports its result there."""
    cpu: int
    memory_gib: float

    @property
    def name(self) -> str:
        """The batch Job's name; the ConfigMap and Secret are named after it."""
        return workload_name(self.job_name, self.job_id, self.attempt)

    @property
    def output_dir(self) -> str:
        """Where the tokenizer is written, and its result.json beside it."""
        return str(self.tokenizer_config["out"])


AnyWorkload = Workload | TokenizerWorkload


def workload_labels(workload: AnyWorkload) -> dict[str, str]:
    """Labels on every object of an attempt, and on its pods."""
    return {
        "app.kubernetes.io/name": "pretrain-trainer",
        "app.kubernetes.io/instance": workload.name,
        "app.kubernetes.io/managed-by": "pretrain-orchestrator",
        "app.kubernetes.io/part-of": "pretrain-orchestrator",
        "pretrain.io/job-id": str(workload.job_id),
        "pretrain.io/attempt": str(workload.attempt),
    }


def config_map_name(workload: AnyWorkload) -> str:
    """The ConfigMap holding the attempt's trainer.json (tokenizer.json for a tokenizer job)."""
    return f"{workload.name}-config"


def secret_name(workload: AnyWorkload) -> str:
    """The Secret holding the attempt's ingest token."""
    return f"{workload.name}-token"


def render_manifests(
    workload: Workload, settings: Settings, *, owner_uid: str | None = None
) -> dict[str, dict[str, Any]]:
    """The attempt's PyTorchJob, ConfigMap and Secret as plain JSON mappings.

    Create the PyTorchJob first, then render again with its `metadata.uid` as `owner_uid`:
    the ConfigMap and Secret then belong to it and go when it is deleted.
    """
    _check(workload)
    owners = None
    if owner_uid:
        owners = [
            k8s.V1OwnerReference(
                api_version=PYTORCHJOB_API_VERSION,
                kind=PYTORCHJOB_KIND,
                name=workload.name,
                uid=owner_uid,
                controller=True,
                block_owner_deletion=True,
            )
        ]
    objects = {
        "pytorchjob": _pytorchjob(workload, settings),
        "configmap": _config_map(workload, settings, owners),
        "secret": _secret(workload, settings, owners),
    }
    return {kind: _serializer().sanitize_for_serialization(obj) for kind, obj in objects.items()}


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


@functools.cache
def _serializer() -> ApiClient:
    return ApiClient()


def _metadata(
    workload: AnyWorkload,
    settings: Settings,
    name: str,
    owners: list[k8s.V1OwnerReference] | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> k8s.V1ObjectMeta:
    return k8s.V1ObjectMeta(
        name=name,
        namespace=settings.namespace,
        labels=workload_labels(workload) | dict(extra_labels or {}),
        owner_references=owners,
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
        metadata=_metadata(workload, settings, workload.name, extra_labels=queue_label),
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


def _storage_volumes(settings: Settings) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """The checkpoint volume (read-write) and the corpus volume (read-only), where configured."""
    volumes, mounts = [], []
    if settings.checkpoint_pvc:
        volumes.append(
            k8s.V1Volume(
                name="checkpoints",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=settings.checkpoint_pvc
                ),
            )
        )
        mounts.append(k8s.V1VolumeMount(name="checkpoints", mount_path=settings.checkpoint_root))
    if settings.data_pvc:
        volumes.append(
            k8s.V1Volume(
                name="data",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=settings.data_pvc, read_only=True
                ),
            )
        )
        mounts.append(k8s.V1VolumeMount(name="data", mount_path=settings.data_root, read_only=True))
    return volumes, mounts


def _token_env(workload: AnyWorkload) -> k8s.V1EnvVar:
    """The attempt's ingest token, from the Secret the workload owns."""
    return k8s.V1EnvVar(
        name=TOKEN_ENV,
        value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=secret_name(workload), key=TOKEN_KEY)
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
    storage_volumes, storage_mounts = _storage_volumes(settings)
    volumes += storage_volumes
    mounts += storage_mounts
    env = [k8s.V1EnvVar(name=name, value=value) for name, value in _env(workload).items()]
    env.append(_token_env(workload))
    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=settings.trainer_image,
        command=list(TRAINER_COMMAND),
        env=env,
        ports=[
            k8s.V1ContainerPort(name=MASTER_PORT_NAME, container_port=MASTER_PORT, protocol="TCP")
        ],
        resources=_resources(workload),
        volume_mounts=mounts,
        # Each trainer rank appends its outcome line (outcome.py) to the termination log; the
        # log's tail stands in when it wrote none (killed, or failed before it could).
        termination_message_path=TERMINATION_LOG,
        termination_message_policy="FallbackToLogsOnError",
    )
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=workload_labels(workload)),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=volumes,
            node_selector=dict(settings.node_selector) or None,
            tolerations=[_toleration(t) for t in settings.tolerations] or None,
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


_TOLERATION_FIELDS = {
    "key": "key",
    "operator": "operator",
    "value": "value",
    "effect": "effect",
    "tolerationSeconds": "toleration_seconds",
}


def _toleration(raw: Mapping[str, Any]) -> k8s.V1Toleration:
    unknown = sorted(set(raw) - set(_TOLERATION_FIELDS))
    if unknown:
        raise ValueError(
            f"toleration {dict(raw)} has unknown keys {unknown}; "
            f"use {', '.join(_TOLERATION_FIELDS)}"
        )
    fields = {_TOLERATION_FIELDS[key]: value for key, value in raw.items()}
    if "toleration_seconds" in fields:
        # Settings hold tolerations as strings; the API wants an integer here.
        try:
            fields["toleration_seconds"] = int(fields["toleration_seconds"])
        except ValueError:
            raise ValueError(
                f"toleration {dict(raw)}: tolerationSeconds must be an integer"
            ) from None
    return k8s.V1Toleration(**fields)


def _config_map(
    workload: Workload, settings: Settings, owners: list[k8s.V1OwnerReference] | None
) -> k8s.V1ConfigMap:
    config = copy.deepcopy(workload.trainer_config)
    # The token lives only in the Secret; the trainer reads it from PRETRAIN_INGEST_TOKEN.
    config.get("metrics", {}).pop("token", None)
    return k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=_metadata(workload, settings, config_map_name(workload), owners),
        data={CONFIG_FILE: json.dumps(config, indent=2) + "\n"},
        # One per attempt and never edited: immutable spares the kubelets a watch.
        immutable=True,
    )


def _secret(
    workload: AnyWorkload,
    settings: Settings,
    owners: list[k8s.V1OwnerReference] | None,
    extra_labels: Mapping[str, str] | None = None,
) -> k8s.V1Secret:
    data = {}
    if workload.ingest_token is not None:
        data[TOKEN_KEY] = base64.b64encode(workload.ingest_token.encode()).decode()
    return k8s.V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=_metadata(workload, settings, secret_name(workload), owners, extra_labels),
        data=data,
        immutable=True,
    )


# ---------------------------------------------------------------- tokenizer jobs

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
    owners = None
    if owner_uid:
        owners = [
            k8s.V1OwnerReference(
                api_version=BATCH_JOB_API_VERSION,
                kind=BATCH_JOB_KIND,
                name=workload.name,
                uid=owner_uid,
                controller=True,
                block_owner_deletion=True,
            )
        ]
    config = k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=_metadata(workload, settings, config_map_name(workload), owners, TOKENIZER_LABELS),
        data={TOKENIZER_CONFIG_FILE: json.dumps(workload.tokenizer_config, indent=2) + "\n"},
        immutable=True,
    )
    objects = {
        "job": _batch_job(workload, settings),
        "configmap": config,
        "secret": _secret(workload, settings, owners, TOKENIZER_LABELS),
    }
    return {kind: _serializer().sanitize_for_serialization(obj) for kind, obj in objects.items()}


def _batch_job(workload: TokenizerWorkload, settings: Settings) -> k8s.V1Job:
    volumes = [
        k8s.V1Volume(
            name="tokenizer-config",
            config_map=k8s.V1ConfigMapVolumeSource(name=config_map_name(workload)),
        )
    ]
    mounts = [k8s.V1VolumeMount(name="tokenizer-config", mount_path=CONFIG_DIR, read_only=True)]
    storage_volumes, storage_mounts = _storage_volumes(settings)
    volumes += storage_volumes
    mounts += storage_mounts
    amounts = {"cpu": str(workload.cpu), "memory": f"{math.ceil(workload.memory_gib * 1024)}Mi"}
    container = k8s.V1Container(
        name=TOKENIZER_CONTAINER_NAME,
        image=settings.trainer_image,
        command=tokenizer_command(workload, python="python", config_path=TOKENIZER_CONFIG_PATH),
        env=[
            # The tokenizers library sizes its thread pool by the node's cores, not the limit.
            k8s.V1EnvVar(name="RAYON_NUM_THREADS", value=str(workload.cpu)),
            _token_env(workload),
        ],
        # Requests equal to limits: a memory-hungry batch job is not the first one evicted.
        resources=k8s.V1ResourceRequirements(requests=amounts, limits=dict(amounts)),
        volume_mounts=mounts,
        # A failure's last log lines (the library's "error: ...") become the pod's message,
        # which the controller quotes as the attempt's reason.
        termination_message_policy="FallbackToLogsOnError",
    )
    labels = workload_labels(workload) | TOKENIZER_LABELS
    return k8s.V1Job(
        api_version=BATCH_JOB_API_VERSION,
        kind=BATCH_JOB_KIND,
        metadata=_metadata(workload, settings, workload.name, extra_labels=TOKENIZER_LABELS),
        spec=k8s.V1JobSpec(
            # Retries belong to the controller, as for PyTorchJobs: one pod, never restarted.
            backoff_limit=0,
            ttl_seconds_after_finished=TOKENIZER_TTL_AFTER_FINISHED_S,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(
                    restart_policy="Never",
                    containers=[container],
                    volumes=volumes,
                    node_selector=dict(settings.node_selector) or None,
                    tolerations=[_toleration(t) for t in settings.tolerations] or None,
                ),
            ),
        ),
    )


# ---------------------------------------------------------------- review


def render_for_review(
    spec_text: str | bytes,
    *,
    attempt: int = 0,
    resume_from: str | None = None,
    settings: Settings,
) -> str:
    """The manifests a spec would launch, as multi-document YAML (`pretrainctl render`).

    The spec is admitted as a submission is, by `admit` (SpecInvalid lists every problem);
    the job id is a placeholder 0 and the token a placeholder string, both decided only at
    launch. The manifests are the kubernetes backend's, even when `settings` are for the
    local one.
    """
    settings = _as_kubernetes(settings)
    admission = admit(parse_spec_text(spec_text), over_memory=OverMemory.REFUSE)
    validated = admission.validated
    if isinstance(validated, ValidatedTokenizerSpec):
        return _tokenizer_for_review(validated, attempt, settings)
    spec = validated.spec
    trainer_config = render_trainer_config(
        job_id=REVIEW_JOB_ID,
        job_name=spec.name,
        spec=spec.model_dump(mode="json"),
        derived=admission.derived_document,
        plan=admission.plan_document,
        attempt=attempt,
        resume_from=resume_from,
        skip_ranges=[],
        lr_scale=1.0,
        ingest_token=REVIEW_TOKEN,
        settings=settings,
    )
    workload = Workload(
        job_id=REVIEW_JOB_ID,
        job_name=spec.name,
        attempt=attempt,
        trainer_config=trainer_config,
        ingest_token=REVIEW_TOKEN,
        nodes=spec.resources.nodes,
        gpus_per_node=spec.resources.gpus_per_node,
        gpu_type=spec.resources.gpu_type,
        gpu_memory_gib=spec.resources.gpu_memory_gib,
    )
    manifests = render_manifests(workload, settings)
    header = (
        f"# {spec.name} attempt {attempt}: job id {REVIEW_JOB_ID} and the ingest token are "
        "placeholders, set at launch\n"
    )
    return header + yaml.dump_all(
        manifests.values(), Dumper=_ReviewDumper, sort_keys=False, allow_unicode=True
    )


def _tokenizer_for_review(validated: ValidatedTokenizerSpec, attempt: int, settings: Settings) -> str:
    spec = validated.spec
    workload = TokenizerWorkload(
        job_id=REVIEW_JOB_ID,
        job_name=spec.name,
        attempt=attempt,
        tokenizer_config=render_tokenizer_config(
            job_id=REVIEW_JOB_ID,
            job_name=spec.name,
            spec=spec.model_dump(mode="json"),
            settings=settings,
        ),
        ingest_token=REVIEW_TOKEN,
        ingest_url=settings.ingest_url,
        cpu=spec.resources.cpu,
        memory_gib=spec.resources.memory_gib,
    )
    manifests = render_tokenizer_manifests(workload, settings)
    header = (
        f"# {spec.name} attempt {attempt}: job id {REVIEW_JOB_ID} and the ingest token are "
        "placeholders, set at launch\n"
    )
    return header + yaml.dump_all(
        manifests.values(), Dumper=_ReviewDumper, sort_keys=False, allow_unicode=True
    )


def _as_kubernetes(settings: Settings) -> Settings:
    """Settings as the kubernetes backend sees them, whichever backend this process runs."""
    if settings.backend == "kubernetes":
        return settings
    update: dict[str, Any] = {"backend": "kubernetes"}
    # A checkpoint root the local backend filled in under state_dir means nothing in a pod.
    if settings.checkpoint_root == str((settings.state_dir / "checkpoints").resolve()):
        update["checkpoint_root"] = POD_CHECKPOINT_ROOT
    return settings.model_copy(update=update)


class _ReviewDumper(yaml.SafeDumper):
    """Writes multi-line strings (the trainer.json) as literal blocks, for people to read."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReviewDumper.add_representer(str, _represent_str)
