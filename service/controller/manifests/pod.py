"""What every attempt's objects share: metadata, the token Secret, storage volumes, tolerations,
and the least privilege its pods run with."""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from typing import Any

from kubeflow.training import ApiClient
from kubernetes import client as k8s

from service.controller.manifests.workloads import (
    TOKEN_ENV,
    TOKEN_KEY,
    AnyWorkload,
    secret_name,
    workload_labels,
)
from service.settings import Settings

# The trainer image's user and group (trainer_image/Dockerfile), numeric so that the kubelet
# can check runAsNonRoot without the image's /etc/passwd.
TRAINER_UID = 10001
# The only paths the trainer writes outside its volumes, each an emptyDir on a read-only root:
# its home (the embedded corpora's cache, under ~/.cache) and /tmp (torch's compile caches).
TRAINER_HOME = "/home/trainer"
SCRATCH_PATHS = {"home": TRAINER_HOME, "tmp": "/tmp"}


@functools.cache
def serializer() -> ApiClient:
    """One client, kept: only its `sanitize_for_serialization` is used, to turn models into JSON."""
    return ApiClient()


def owned_by(
    api_version: str, kind: str, name: str, uid: str | None
) -> list[k8s.V1OwnerReference] | None:
    """The owner reference that makes the workload's ConfigMap and Secret go with it (once its uid is known)."""
    if not uid:
        return None
    return [
        k8s.V1OwnerReference(
            api_version=api_version,
            kind=kind,
            name=name,
            uid=uid,
            controller=True,
            block_owner_deletion=True,
        )
    ]


def metadata(
    workload: AnyWorkload,
    settings: Settings,
    name: str,
    owners: list[k8s.V1OwnerReference] | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> k8s.V1ObjectMeta:
    """Name, namespace, the attempt's labels (and these extra ones) and its owners, if known."""
    return k8s.V1ObjectMeta(
        name=name,
        namespace=settings.namespace,
        labels=workload_labels(workload) | dict(extra_labels or {}),
        owner_references=owners,
    )


def storage(settings: Settings) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """The checkpoint volume (read-write) and the corpus volume (read-only), where configured.

    Without a checkpoint claim the checkpoints go to an emptyDir: they die with the pod (a
    smoke test's), but the root filesystem they would otherwise land on is read-only."""
    volumes, mounts = [], []
    if settings.checkpoint_pvc:
        claim = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=settings.checkpoint_pvc)
        volumes.append(k8s.V1Volume(name="checkpoints", persistent_volume_claim=claim))
    else:
        volumes.append(k8s.V1Volume(name="checkpoints", empty_dir=k8s.V1EmptyDirVolumeSource()))
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


def token_env(workload: AnyWorkload) -> k8s.V1EnvVar:
    """The attempt's ingest token, from the Secret the workload owns."""
    return k8s.V1EnvVar(
        name=TOKEN_ENV,
        value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=secret_name(workload), key=TOKEN_KEY)
        ),
    )


_TOLERATION_FIELDS = {
    "key": "key",
    "operator": "operator",
    "value": "value",
    "effect": "effect",
    "tolerationSeconds": "toleration_seconds",
}


def toleration(raw: Mapping[str, Any]) -> k8s.V1Toleration:
    """A toleration from settings' camelCase mapping; ValueError naming a key it does not know."""
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


def token_secret(
    workload: AnyWorkload,
    settings: Settings,
    owners: list[k8s.V1OwnerReference] | None,
    extra_labels: Mapping[str, str] | None = None,
) -> k8s.V1Secret:
    """The Secret holding the attempt's ingest token (empty when it has none)."""
    data = {}
    if workload.ingest_token is not None:
        data[TOKEN_KEY] = base64.b64encode(workload.ingest_token.encode()).decode()
    return k8s.V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=metadata(workload, settings, secret_name(workload), owners, extra_labels),
        data=data,
        immutable=True,
    )


def scratch() -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """The writable emptyDirs a trainer or tokenizer needs on its read-only root filesystem."""
    volumes = [k8s.V1Volume(name=name, empty_dir=k8s.V1EmptyDirVolumeSource()) for name in SCRATCH_PATHS]
    mounts = [k8s.V1VolumeMount(name=name, mount_path=path) for name, path in SCRATCH_PATHS.items()]
    return volumes, mounts


def pod_security_context() -> k8s.V1PodSecurityContext:
    """A pod that runs a user's job: the image's non-root user, the runtime's seccomp profile,
    and the checkpoint volume group-writable by it (fsGroup)."""
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=TRAINER_UID,
        run_as_group=TRAINER_UID,
        fs_group=TRAINER_UID,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context() -> k8s.V1SecurityContext:
    """No capabilities, no way to gain privileges, nothing written outside its volumes."""
    return k8s.V1SecurityContext(
        run_as_non_root=True,
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )
