"""Attempt manifests: accepted by the real PyTorchJob CRD and core/v1 schemas, nothing pruned."""

from __future__ import annotations

import base64
import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.controller.manifests import (
    CONFIG_PATH,
    MAX_WORKLOAD_NAME_LENGTH,
    TOKEN_ENV,
    Workload,
    render_for_review,
    render_manifests,
    workload_name,
)
from service.settings import Settings
from service.spec import SpecInvalid
from tests.service.controller.test_trainer_config import (
    EXAMPLES,
    QWEN,
    TINY,
    TOKEN,
    load_example,
    make_settings,
    render,
)
from trainer.config import config_from_dict, validate

# The real CRD, vendored with its source and licence (crds/README.md): the clone stands alone.
PYTORCHJOB_CRD = Path(__file__).resolve().parent / "crds" / "kubeflow.org_pytorchjobs.yaml"
KUBERNETES_VERSION = "1.30.0"
OWNER_UID = "5b0f6d7e-1c2a-4f3b-9a8d-0123456789ab"

FULL_SETTINGS = {
    "namespace": "training",
    "trainer_image": "registry.example.com/pretrain/trainer:1.2.3",
    "checkpoint_pvc": "pretrain-checkpoints",
    "data_pvc": "pretrain-corpora",
    "scheduling_queue": "research",
    "priority_class": "training-high",
    "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": "300",
        },
    ],
}


# ---------------------------------------------------------------- helpers


@functools.cache
def pytorchjob_schema() -> dict[str, Any]:
    crd = yaml.safe_load(PYTORCHJOB_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def pruned_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of every field a structural-schema API server would drop from `value`."""
    if schema.get("x-kubernetes-int-or-string"):
        return []
    preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
    if isinstance(value, list):
        items = schema.get("items", {})
        return [
            f for i, item in enumerate(value) for f in pruned_fields(item, items, f"{path}[{i}]")
        ]
    if not isinstance(value, dict):
        return []
    properties = schema.get("properties", {})
    additional = schema.get("additionalProperties")
    dropped = []
    for key, child in value.items():
        child_path = f"{path}.{key}" if path else key
        if path == "" and key in ("apiVersion", "kind", "metadata"):
            continue  # the API server owns these: ObjectMeta is never pruned by a CRD schema
        if key in properties:
            dropped += pruned_fields(child, properties[key], child_path)
        elif isinstance(additional, dict):
            dropped += pruned_fields(child, additional, child_path)
        elif not (preserve or additional is True):
            dropped.append(child_path)
    return dropped


def as_pod(template: dict[str, Any], namespace: str) -> dict[str, Any]:
    metadata = {"name": "pod-from-template", "namespace": namespace, **template["metadata"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def workload_for(
    raw: dict[str, Any],
    *,
    job_id: int = 42,
    attempt: int = 0,
    token: str | None = TOKEN,
    settings: dict[str, Any] | None = None,
) -> Workload:
    config = render(
        raw, job_id=job_id, attempt=attempt, token=token, settings=make_settings(**(settings or {}))
    )
    resources = raw["resources"]
    return Workload(
        job_id=job_id,
        job_name=raw["name"],
        attempt=attempt,
        trainer_config=config,
        ingest_token=token,
        nodes=resources["nodes"],
        gpus_per_node=resources["gpus_per_node"],
        gpu_type=resources["gpu_type"],
        gpu_memory_gib=resources["gpu_memory_gib"],
        env_secrets=tuple(filter(None, [raw.get("data", {}).get("credentials_secret")])),
    )


def one_node_gpu_spec() -> dict[str, Any]:
    raw = load_example(TINY)
    raw["name"] = "tiny-gpu"
    raw["resources"] = {"nodes": 1, "gpus_per_node": 2, "gpu_type": "H100", "gpu_memory_gib": 80}
    return raw


CASES = {
    "tiny-cpu": (lambda: load_example(TINY), {}),
    "tiny-cpu-full-settings": (lambda: load_example(TINY), FULL_SETTINGS),
    "qwen2-7b-64-nodes": (lambda: load_example(QWEN), {}),
    "qwen2-7b-64-nodes-full-settings": (lambda: load_example(QWEN), FULL_SETTINGS),
    "one-node-gpu": (one_node_gpu_spec, {}),
    "one-node-gpu-priority-only": (one_node_gpu_spec, {"priority_class": "training-high"}),
    "one-node-gpu-checkpoint-pvc-only": (one_node_gpu_spec, {"checkpoint_pvc": "ckpt"}),
    "one-node-gpu-s3-sources": (lambda: s3_spec(one_node_gpu_spec()), {}),
}


def s3_spec(raw: dict[str, Any]) -> dict[str, Any]:
    """Sources on object storage, credentials from a Secret the spec names."""
    for stage in raw["stages"]:
        for source in stage["data"]:
            source["path"] = f"s3://corpus/v3/{source['channel']}"
    raw["data"] = {"credentials_secret": "corpus-reader"}
    return raw


def rendered_case(name: str, *, owner_uid: str | None = None) -> tuple[Workload, dict[str, Any]]:
    make_raw, settings = CASES[name]
    raw = make_raw()
    workload = workload_for(raw, settings=settings)
    return workload, render_manifests(workload, make_settings(**settings), owner_uid=owner_uid)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container["env"]}


def templates(pytorchjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        role: spec["template"] for role, spec in pytorchjob["spec"]["pytorchReplicaSpecs"].items()
    }


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("case", list(CASES))
def test_pytorchjob_validates_against_the_crd_schema(case):
    _, manifests = rendered_case(case)
    jsonschema.Draft7Validator(pytorchjob_schema()).validate(manifests["pytorchjob"])


@pytest.mark.parametrize("case", list(CASES))
def test_api_server_would_prune_nothing_from_the_pytorchjob(case):
    _, manifests = rendered_case(case)
    assert pruned_fields(manifests["pytorchjob"], pytorchjob_schema()) == []


def test_the_pruning_check_notices_unknown_fields():
    _, manifests = rendered_case("one-node-gpu")
    job = copy.deepcopy(manifests["pytorchjob"])
    job["spec"]["nprocsPerNode"] = "2"
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    template["metadata"]["ownerReferences"] = []
    template["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 2  # int-or-string
    assert pruned_fields(job, pytorchjob_schema()) == [
        "spec.pytorchReplicaSpecs.Master.template.metadata.ownerReferences",
        "spec.nprocsPerNode",
    ]


def test_an_integer_nproc_per_node_is_refused_by_the_crd():
    _, manifests = rendered_case("one-node-gpu")
    job = copy.deepcopy(manifests["pytorchjob"])
    job["spec"]["nprocPerNode"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(pytorchjob_schema()).validate(job)


@pytest.mark.parametrize("case", list(CASES))
def test_pod_templates_configmap_and_secret_pass_strict_core_schemas(case):
    _, manifests = rendered_case(case)
    namespace = manifests["pytorchjob"]["metadata"]["namespace"]
    for template in templates(manifests["pytorchjob"]).values():
        kubernetes_validate.validate(as_pod(template, namespace), KUBERNETES_VERSION, strict=True)
    kubernetes_validate.validate(manifests["configmap"], KUBERNETES_VERSION, strict=True)
    kubernetes_validate.validate(manifests["secret"], KUBERNETES_VERSION, strict=True)


def test_owned_configmap_and_secret_pass_strict_core_schemas():
    _, manifests = rendered_case("tiny-cpu", owner_uid=OWNER_UID)
    kubernetes_validate.validate(manifests["configmap"], KUBERNETES_VERSION, strict=True)
    kubernetes_validate.validate(manifests["secret"], KUBERNETES_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_pod_field():
    _, manifests = rendered_case("one-node-gpu")
    pod = as_pod(templates(manifests["pytorchjob"])["Master"], "default")
    pod["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------- shape


def test_sixty_four_nodes_are_one_master_and_sixty_three_workers():
    _, manifests = rendered_case("qwen2-7b-64-nodes")
    spec = manifests["pytorchjob"]["spec"]
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 63
    assert spec["nprocPerNode"] == "8"


def test_one_node_has_a_master_and_no_worker():
    _, manifests = rendered_case("one-node-gpu")
    spec = manifests["pytorchjob"]["spec"]
    assert list(spec["pytorchReplicaSpecs"]) == ["Master"]
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["nprocPerNode"] == "2"


def test_failures_are_left_to_the_controller():
    _, manifests = rendered_case("qwen2-7b-64-nodes")
    spec = manifests["pytorchjob"]["spec"]
    assert {r["restartPolicy"] for r in spec["pytorchReplicaSpecs"].values()} == {"Never"}
    assert spec["runPolicy"]["backoffLimit"] == 0
    assert spec["runPolicy"]["cleanPodPolicy"] == "Running"
    assert "schedulingPolicy" not in spec["runPolicy"]


def test_every_trainer_pod_leaves_its_outcome_lines_or_its_log_tail_as_termination_message():
    _, manifests = rendered_case("qwen2-7b-64-nodes")
    for template in templates(manifests["pytorchjob"]).values():
        (container,) = template["spec"]["containers"]
        assert container["terminationMessagePath"] == "/dev/termination-log"  # job.result_path's default
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_gpu_pods_run_torchrun_in_the_pytorch_container_with_gpu_limits():
    _, manifests = rendered_case("qwen2-7b-64-nodes")
    for template in templates(manifests["pytorchjob"]).values():
        (container,) = template["spec"]["containers"]
        assert container["name"] == "pytorch"
        assert container["image"] == "pretrain-orchestrator/trainer:0.1.0"
        assert container["resources"] == {"limits": {"nvidia.com/gpu": "8"}}
        assert container["command"][:3] == ["python", "-m", "torch.distributed.run"]
        assert container["command"][-4:] == ["-m", "trainer.train", "--config", CONFIG_PATH]
        assert "--nproc-per-node=$(PET_NPROC_PER_NODE)" in container["command"]
        assert container["ports"] == [
            {"containerPort": 23456, "name": "pytorchjob-port", "protocol": "TCP"}
        ]
        env = env_of(container)
        assert env["CUDA_DEVICE_MAX_CONNECTIONS"]["value"] == "1"
        assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"]["value"] == "1"
        assert env["NCCL_DEBUG"]["value"] == "WARN"
        assert env[TOKEN_ENV] == {
            "name": TOKEN_ENV,
            "valueFrom": {"secretKeyRef": {"name": "qwen2-7b-base-42-a0-token", "key": "token"}},
        }
        assert template["spec"]["terminationGracePeriodSeconds"] >= 60


def test_cpu_pods_request_cores_and_memory_and_no_gpus():
    _, manifests = rendered_case("tiny-cpu")
    (container,) = templates(manifests["pytorchjob"])["Master"]["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}}
    env = env_of(container)
    assert "NCCL_DEBUG" not in env
    assert set(env) == {TOKEN_ENV}


def test_volumes_without_claims_are_the_config_shared_memory_and_scratch():
    _, manifests = rendered_case("one-node-gpu")
    spec = templates(manifests["pytorchjob"])["Master"]["spec"]
    assert spec["volumes"] == [
        {"name": "trainer-config", "configMap": {"name": "tiny-gpu-42-a0-config"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "checkpoints", "emptyDir": {}},  # on a read-only root: the pod's own, unclaimed
        {"name": "home", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    assert spec["containers"][0]["volumeMounts"] == [
        {"name": "trainer-config", "mountPath": "/etc/pretrain", "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "checkpoints", "mountPath": "/checkpoints"},
        {"name": "home", "mountPath": "/home/trainer"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    assert CONFIG_PATH == "/etc/pretrain/trainer.json"


# What every pod that runs a user's job gets (tokenizer jobs' too: test_tokenizer_manifests).
UNPRIVILEGED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
UNPRIVILEGED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_trainer_pods_run_unprivileged_on_a_read_only_root_without_a_service_account_token(case):
    _, manifests = rendered_case(case)
    for template in templates(manifests["pytorchjob"]).values():
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"] == UNPRIVILEGED_POD
        (container,) = spec["containers"]
        assert container["securityContext"] == UNPRIVILEGED_CONTAINER
        # Where the trainer writes on its read-only root: its home (caches) and /tmp, scratch.
        volumes = {v["name"]: v for v in spec["volumes"]}
        writable = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert writable["/home/trainer"] == {"name": "home", "emptyDir": {}}
        assert writable["/tmp"] == {"name": "tmp", "emptyDir": {}}


def test_claims_mount_checkpoints_writable_and_data_read_only():
    _, manifests = rendered_case("qwen2-7b-64-nodes-full-settings")
    for template in templates(manifests["pytorchjob"]).values():
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert volumes["checkpoints"]["persistentVolumeClaim"] == {
            "claimName": "pretrain-checkpoints"
        }
        assert mounts["checkpoints"] == {"name": "checkpoints", "mountPath": "/checkpoints"}
        assert volumes["data"]["persistentVolumeClaim"] == {
            "claimName": "pretrain-corpora",
            "readOnly": True,
        }
        assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}


def test_scheduling_settings_reach_the_job_and_its_pods():
    _, manifests = rendered_case("qwen2-7b-64-nodes-full-settings")
    job = manifests["pytorchjob"]
    assert job["metadata"]["namespace"] == "training"
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {
        "queue": "research",
        "priorityClass": "training-high",
        "minAvailable": 64,
    }
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
    for template in templates(job).values():
        spec = template["spec"]
        assert spec["containers"][0]["image"] == FULL_SETTINGS["trainer_image"]
        assert spec["priorityClassName"] == "training-high"
        assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert spec["tolerations"][1] == {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 300,
        }


def test_priority_alone_still_gangs_every_node():
    _, manifests = rendered_case("one-node-gpu-priority-only")
    assert manifests["pytorchjob"]["spec"]["runPolicy"]["schedulingPolicy"] == {
        "priorityClass": "training-high",
        "minAvailable": 1,
    }
    assert "kueue.x-k8s.io/queue-name" not in manifests["pytorchjob"]["metadata"]["labels"]


def test_every_object_and_pod_carries_the_attempt_labels():
    workload, manifests = rendered_case("qwen2-7b-64-nodes")
    expected = {
        "app.kubernetes.io/name": "pretrain-trainer",
        "app.kubernetes.io/instance": "qwen2-7b-base-42-a0",
        "app.kubernetes.io/managed-by": "pretrain-orchestrator",
        "app.kubernetes.io/part-of": "pretrain-orchestrator",
        "pretrain.io/job-id": "42",
        "pretrain.io/attempt": "0",
    }
    assert workload.name == "qwen2-7b-base-42-a0"
    for manifest in manifests.values():
        assert manifest["metadata"]["labels"] == expected
        assert manifest["metadata"]["namespace"] == "default"
    for template in templates(manifests["pytorchjob"]).values():
        assert template["metadata"]["labels"] == expected
    assert manifests["configmap"]["metadata"]["name"] == "qwen2-7b-base-42-a0-config"
    assert manifests["secret"]["metadata"]["name"] == "qwen2-7b-base-42-a0-token"


def test_the_token_is_in_the_secret_and_nowhere_else():
    workload, manifests = rendered_case("tiny-cpu")
    secret = manifests["secret"]
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN
    assert TOKEN not in json.dumps(manifests["configmap"])
    assert TOKEN not in json.dumps(manifests["pytorchjob"])
    trainer_json = json.loads(manifests["configmap"]["data"]["trainer.json"])
    assert "token" not in trainer_json["metrics"]
    assert workload.trainer_config["metrics"]["token"] == TOKEN  # the input is left alone


def test_configmap_holds_the_trainer_config_the_trainer_accepts():
    workload, manifests = rendered_case("qwen2-7b-64-nodes")
    trainer_json = json.loads(manifests["configmap"]["data"]["trainer.json"])
    expected = copy.deepcopy(workload.trainer_config)
    del expected["metrics"]["token"]
    assert trainer_json == expected
    validate(config_from_dict(trainer_json), world_size=64 * 8)


def test_owner_references_point_at_the_pytorchjob_when_its_uid_is_known():
    _, manifests = rendered_case("tiny-cpu", owner_uid=OWNER_UID)
    owner = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "name": "tiny-cpu-42-a0",
        "uid": OWNER_UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert manifests["configmap"]["metadata"]["ownerReferences"] == [owner]
    assert manifests["secret"]["metadata"]["ownerReferences"] == [owner]
    assert "ownerReferences" not in manifests["pytorchjob"]["metadata"]


def test_without_an_owner_uid_nothing_is_owned():
    _, manifests = rendered_case("tiny-cpu")
    for manifest in manifests.values():
        assert "ownerReferences" not in manifest["metadata"]


def test_a_config_for_another_attempt_is_refused():
    workload = workload_for(load_example(TINY), attempt=1)
    mismatched = Workload(**{**workload.__dict__, "attempt": 2})
    with pytest.raises(ValueError, match="attempt"):
        render_manifests(mismatched, make_settings())


def test_an_unknown_toleration_key_is_refused():
    settings = {"tolerations": [{"key": "a", "operator": "Exists", "effects": "NoSchedule"}]}
    workload = workload_for(load_example(TINY), settings=settings)
    with pytest.raises(ValueError, match="effects"):
        render_manifests(workload, make_settings(**settings))


# ---------------------------------------------------------------- names


def test_workload_name_is_name_id_and_attempt():
    assert workload_name("tiny-cpu", 42, 3) == "tiny-cpu-42-a3"


def test_long_names_are_shortened_to_fit_and_never_end_in_a_dash():
    name = "a" * 30 + "-" + "b" * 17  # 48 characters, the spec's maximum
    shortened = workload_name(name, 12345678, 123)
    assert len(shortened) <= MAX_WORKLOAD_NAME_LENGTH
    assert shortened == "a" * 30 + "-12345678-a123"  # the cut lands on the dash, which goes
    longest = workload_name("x" * 48, 10**12, 999)
    assert len(longest) == MAX_WORKLOAD_NAME_LENGTH
    assert longest.endswith("-1000000000000-a999")
    for pod_suffix in ("-master-0", "-worker-9999"):
        assert len(longest + pod_suffix) <= 63


def test_names_stay_unique_across_jobs_and_attempts_when_shortened():
    name = "a-very-long-job-name-that-will-not-fit-whole-x"
    names = {workload_name(name, job, attempt) for job in (1, 12, 999_999) for attempt in range(4)}
    assert len(names) == 12
    assert all(len(n) <= MAX_WORKLOAD_NAME_LENGTH and not n.endswith("-") for n in names)


@pytest.mark.parametrize("bad", ["Tiny", "1tiny", "tiny_cpu", "tiny-", ""])
def test_names_that_are_not_dns_labels_are_refused(bad):
    with pytest.raises(ValueError):
        workload_name(bad, 1, 0)


# ---------------------------------------------------------------- review


def test_render_for_review_yields_the_three_documents():
    text = render_for_review(
        (EXAMPLES / TINY).read_text(),
        attempt=1,
        resume_from="/checkpoints/tiny-cpu-0/step-00000040",
        settings=make_settings(),
    )
    documents = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in documents] == ["PyTorchJob", "ConfigMap", "Secret"]
    assert documents[0]["metadata"]["name"] == "tiny-cpu-0-a1"
    trainer_json = json.loads(documents[1]["data"]["trainer.json"])
    assert trainer_json["job"] == {
        "id": "0",
        "attempt": 1,
        "name": "tiny-cpu",
        "result_path": "/dev/termination-log",
    }
    assert trainer_json["checkpoint"]["resume_from"] == "/checkpoints/tiny-cpu-0/step-00000040"
    assert base64.b64decode(documents[2]["data"]["token"]).decode() == "<minted at launch>"
    assert "|" in text  # trainer.json is a readable literal block
    jsonschema.Draft7Validator(pytorchjob_schema()).validate(documents[0])


def test_render_for_review_shows_pod_paths_even_under_local_backend_settings(tmp_path):
    settings = Settings(backend="local", state_dir=tmp_path, checkpoint_pvc="ckpt")
    assert settings.checkpoint_root.startswith(str(tmp_path))
    text = render_for_review((EXAMPLES / TINY).read_text(), settings=settings)
    job, configmap, _ = yaml.safe_load_all(text)
    trainer_json = json.loads(configmap["data"]["trainer.json"])
    assert trainer_json["checkpoint"]["directory"] == "/checkpoints/tiny-cpu-0"
    mounts = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert {"name": "checkpoints", "mountPath": "/checkpoints"} in mounts["volumeMounts"]


def test_render_for_review_refuses_an_invalid_spec():
    raw = load_example(TINY)
    raw["batch"]["global_batch_size"] = 15
    with pytest.raises(SpecInvalid, match="global_batch_size"):
        render_for_review(json.dumps(raw), settings=make_settings())


def test_object_store_credentials_reach_the_trainer_from_the_named_secret_only():
    _, manifests = rendered_case("one-node-gpu-s3-sources")
    for template in templates(manifests["pytorchjob"]).values():
        (container,) = template["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "corpus-reader"}}]
        assert not [e for e in container["env"] if e["name"].startswith("AWS_")]
    config = manifests["configmap"]["data"]["trainer.json"]
    assert "s3://corpus/v3/" in config and "corpus-reader" not in config and "AWS_" not in config
    _, plain = rendered_case("one-node-gpu")
    for template in templates(plain["pytorchjob"]).values():
        assert "envFrom" not in template["spec"]["containers"][0]
