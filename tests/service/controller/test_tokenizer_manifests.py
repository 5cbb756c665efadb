"""A tokenizer job's manifests: a batch/v1 Job, its ConfigMap and Secret, strict core schemas."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import yaml

from service.controller.manifests import (
    TOKEN_ENV,
    TOKENIZER_CONFIG_PATH,
    TokenizerWorkload,
    render_for_review,
    render_tokenizer_manifests,
)
from service.controller.tokenizer_config import render_tokenizer_config
from service.controller.workload import unsaved_job
from service.db.models import Job
from service.settings import Settings
from tests.service.controller.test_manifests import (
    FULL_SETTINGS,
    KUBERNETES_VERSION,
    OWNER_UID,
    UNPRIVILEGED_CONTAINER,
    UNPRIVILEGED_POD,
)
from tests.service.controller.test_trainer_config import TOKEN, make_settings

SPEC = {
    "name": "zh-tokenizer",
    "kind": "tokenizer",
    "mode": "train",
    "corpora": ["embedded:zh", "web/zh.jsonl"],
    "options": {"vocab_size": 32000, "spare": 1000},
    "resources": {"cpu": 16, "memory_gib": 96},
}


def stored_tokenizer_job() -> Job:
    return unsaved_job(name=SPEC["name"], kind="tokenizer", spec=SPEC, derived={}, plan=None, job_id=42)


def workload(settings: Settings, *, attempt: int = 0, token: str | None = TOKEN) -> TokenizerWorkload:
    return TokenizerWorkload(
        job_id=42,
        job_name=SPEC["name"],
        attempt=attempt,
        tokenizer_config=render_tokenizer_config(stored_tokenizer_job(), settings),
        ingest_token=token,
        ingest_url=settings.ingest_url,
        cpu=SPEC["resources"]["cpu"],
        memory_gib=SPEC["resources"]["memory_gib"],
    )


def manifests(owner_uid: str | None = None, **settings: Any) -> dict[str, dict[str, Any]]:
    resolved = make_settings(**(FULL_SETTINGS | settings))
    return render_tokenizer_manifests(workload(resolved), resolved, owner_uid=owner_uid)


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def test_the_batch_job_configmap_and_secret_pass_strict_core_schemas():
    for owner_uid in (None, OWNER_UID):
        for manifest in manifests(owner_uid).values():
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_job_runs_one_pod_once_and_leaves_retries_to_the_controller():
    job = manifests()["job"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"]["name"] == "zh-tokenizer-42-a0"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_the_pod_gets_the_specs_cpu_and_memory_as_requests_and_limits():
    container = container_of(manifests()["job"])
    amounts = {"cpu": "16", "memory": f"{96 * 1024}Mi"}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    assert {"name": "RAYON_NUM_THREADS", "value": "16"} in container["env"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])


def test_the_pod_lands_where_trainer_pods_are_told_to_and_mounts_both_volumes():
    settings = make_settings(**FULL_SETTINGS)
    pod = manifests()["job"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == FULL_SETTINGS["node_selector"]
    assert [t["key"] for t in pod["tolerations"]] == [t["key"] for t in FULL_SETTINGS["tolerations"]]
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]}
    assert claims["checkpoints"] == {"claimName": "pretrain-checkpoints"}
    assert claims["data"] == {"claimName": "pretrain-corpora", "readOnly": True}
    mounts = {m["name"]: m for m in container_of(manifests()["job"])["volumeMounts"]}
    assert mounts["checkpoints"]["mountPath"] == settings.checkpoint_root
    assert not mounts["checkpoints"].get("readOnly")
    assert mounts["data"]["readOnly"] is True


def test_the_pod_runs_unprivileged_on_a_read_only_root_without_a_service_account_token():
    pod = manifests()["job"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == UNPRIVILEGED_POD
    assert container_of(manifests()["job"])["securityContext"] == UNPRIVILEGED_CONTAINER
    scratch = {m["mountPath"] for m in container_of(manifests()["job"])["volumeMounts"] if m["name"] in ("home", "tmp")}
    assert scratch == {"/home/trainer", "/tmp"}


def test_the_command_runs_the_library_job_on_the_mounted_config_then_reports_the_result():
    command = container_of(manifests()["job"])["command"]
    script, *arguments = command[2:]
    assert command[:2] == ["sh", "-c"]
    assert "-m trainer.tokenizer.cli job" in script and "-m trainer.job_result" in script
    assert arguments == [
        "tokenizer-job",
        "python",
        TOKENIZER_CONFIG_PATH,
        "/checkpoints/zh-tokenizer-42/tokenizer",
        "http://pretrain-api:8000",
        "42",
        "0",
    ]


def test_the_token_reaches_the_pod_only_through_the_secret():
    rendered = manifests()
    env = {e["name"]: e for e in container_of(rendered["job"])["env"]}
    assert env[TOKEN_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": "zh-tokenizer-42-a0-token",
        "key": "token",
    }
    assert TOKEN not in json.dumps(rendered["job"]) + json.dumps(rendered["configmap"])
    config = json.loads(rendered["configmap"]["data"]["tokenizer.json"])
    assert config["corpora"] == ["embedded:zh", "/data/web/zh.jsonl"]


def test_owned_objects_name_the_batch_job_as_their_controller():
    rendered = manifests(OWNER_UID)
    for kind in ("configmap", "secret"):
        (owner,) = rendered[kind]["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "zh-tokenizer-42-a0",
            "uid": OWNER_UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    assert "ownerReferences" not in rendered["job"]["metadata"]


def test_every_object_carries_the_attempts_labels_and_the_kind():
    rendered = manifests()
    pod_labels = rendered["job"]["spec"]["template"]["metadata"]["labels"]
    for labels in [m["metadata"]["labels"] for m in rendered.values()] + [pod_labels]:
        assert labels["pretrain.io/job-id"] == "42"
        assert labels["pretrain.io/attempt"] == "0"
        assert labels["pretrain.io/kind"] == "tokenizer"
        assert labels["app.kubernetes.io/managed-by"] == "pretrain-orchestrator"


def test_pretrainctl_render_of_a_tokenizer_spec_shows_its_batch_job():
    text = render_for_review(yaml.safe_dump(SPEC), settings=Settings(**FULL_SETTINGS))
    documents = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in documents] == ["Job", "ConfigMap", "Secret"]
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
