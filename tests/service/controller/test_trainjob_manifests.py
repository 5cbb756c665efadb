"""Trainer v2 TrainJob manifests: accepted by the vendored TrainJob CRD, nothing pruned, and
carrying what a PyTorchJob attempt carries (ConfigMap, Secret, volumes, labels, credentials)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from service.controller.manifests import (
    CONFIG_PATH,
    TOKEN_ENV,
    TRAINJOB_CONTAINER_NAME,
    render_for_review,
    render_manifests,
    render_trainjob_manifests,
    workload_labels,
)
from tests.service.controller.test_manifests import (
    CASES,
    FULL_SETTINGS,
    OWNER_UID,
    pruned_fields,
    templates,
    workload_for,
)
from tests.service.controller.test_trainer_config import EXAMPLES, TINY, make_settings

TRAINJOB_CRD = Path(__file__).resolve().parent / "crds" / "trainer.kubeflow.org_trainjobs.yaml"


@functools.cache
def trainjob_schema() -> dict[str, Any]:
    crd = yaml.safe_load(TRAINJOB_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def rendered(case: str, *, owner_uid: str | None = None):
    make_raw, settings = CASES[case]
    workload = workload_for(make_raw(), settings=settings)
    both = make_settings(**settings)
    return (
        workload,
        render_trainjob_manifests(workload, both, owner_uid=owner_uid),
        render_manifests(workload, both, owner_uid=owner_uid),
    )


def node_override(trainjob: dict[str, Any]) -> dict[str, Any]:
    (override,) = trainjob["spec"]["podSpecOverrides"]
    assert override["targetJobs"] == [{"name": "node"}]
    return override


@pytest.mark.parametrize("case", list(CASES))
def test_trainjob_validates_against_the_crd_schema_and_nothing_is_pruned(case):
    _, manifests, _ = rendered(case)
    jsonschema.Draft7Validator(trainjob_schema()).validate(manifests["trainjob"])
    assert pruned_fields(manifests["trainjob"], trainjob_schema()) == []


def test_the_crd_check_notices_a_field_the_trainjob_api_lacks():
    _, manifests, _ = rendered("tiny-cpu")
    job = copy.deepcopy(manifests["trainjob"])
    job["spec"]["trainer"]["restartPolicy"] = "Never"
    job["spec"]["trainer"]["numNodes"] = "2"
    assert pruned_fields(job, trainjob_schema()) == ["spec.trainer.restartPolicy"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(trainjob_schema()).validate(job)


@pytest.mark.parametrize("case", ["tiny-cpu-full-settings", "qwen2-7b-64-nodes", "one-node-gpu-s3-sources"])
def test_the_trainjob_carries_what_the_pytorchjob_pods_carry(case):
    workload, trainjob, pytorchjob = rendered(case, owner_uid=OWNER_UID)
    pod = templates(pytorchjob["pytorchjob"])["Master"]["spec"]
    (container,) = pod["containers"]
    job = trainjob["trainjob"]
    override = node_override(job)
    (node,) = override["containers"]
    assert node["name"] == TRAINJOB_CONTAINER_NAME
    assert override["volumes"] == pod["volumes"]
    assert node["volumeMounts"] == container["volumeMounts"]
    assert node.get("envFrom") == container.get("envFrom")
    assert override.get("nodeSelector") == pod.get("nodeSelector")
    assert override.get("tolerations") == pod.get("tolerations")
    trainer = job["spec"]["trainer"]
    assert trainer["env"] == container["env"]
    assert trainer["resourcesPerNode"] == container["resources"]
    assert trainer["image"] == container["image"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (workload.nodes, workload.gpus_per_node)
    assert trainer["command"][-2:] == ["--config", CONFIG_PATH]
    assert job["metadata"]["name"] == workload.name
    assert job["spec"]["labels"] == workload_labels(workload)
    # The ConfigMap and Secret are the PyTorchJob's, owned by the TrainJob instead.
    for key in ("configmap", "secret"):
        ours, theirs = copy.deepcopy(trainjob[key]), copy.deepcopy(pytorchjob[key])
        (owner,) = ours["metadata"].pop("ownerReferences")
        theirs["metadata"].pop("ownerReferences")
        assert ours == theirs
        assert (owner["kind"], owner["apiVersion"], owner["uid"]) == (
            "TrainJob",
            "trainer.kubeflow.org/v1alpha1",
            OWNER_UID,
        )


def test_the_trainjob_names_the_runtime_the_settings_name():
    make_raw, _ = CASES["tiny-cpu"]
    workload = workload_for(make_raw())
    job = render_trainjob_manifests(workload, make_settings(trainer_runtime="torch-nightly"))["trainjob"]
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-nightly",
    }


def test_the_token_reaches_the_trainer_from_the_secret_only():
    workload, manifests, _ = rendered("tiny-cpu")
    (token,) = [e for e in manifests["trainjob"]["spec"]["trainer"]["env"] if e["name"] == TOKEN_ENV]
    assert token["valueFrom"]["secretKeyRef"] == {"name": f"{workload.name}-token", "key": "token"}
    assert workload.ingest_token not in yaml.safe_dump(manifests["trainjob"])
    assert workload.ingest_token not in manifests["configmap"]["data"]["trainer.json"]


def test_full_settings_reach_the_trainjob():
    _, manifests, _ = rendered("qwen2-7b-64-nodes-full-settings")
    job = manifests["trainjob"]
    assert job["metadata"]["namespace"] == FULL_SETTINGS["namespace"]
    assert job["spec"]["trainer"]["image"] == FULL_SETTINGS["trainer_image"]
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in node_override(job)["volumes"]}
    assert claims["checkpoints"] == {"claimName": "pretrain-checkpoints"}
    assert claims["data"] == {"claimName": "pretrain-corpora", "readOnly": True}


def test_the_review_renders_what_the_trainer_backend_would_create():
    settings = make_settings(kubernetes_workload="kubeflow-trainer")
    text = render_for_review((EXAMPLES / TINY).read_text(), attempt=1, settings=settings)
    job, configmap, secret = yaml.safe_load_all(text)
    assert [job["kind"], configmap["kind"], secret["kind"]] == ["TrainJob", "ConfigMap", "Secret"]
    assert job["metadata"]["name"] == "tiny-cpu-0-a1"
    jsonschema.Draft7Validator(trainjob_schema()).validate(job)
