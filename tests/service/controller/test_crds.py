"""The vendored CRD schemas are the ones their README names, and they accept and refuse as a cluster would."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

CRDS = Path(__file__).resolve().parent / "crds"
TRAINJOB_CRD = CRDS / "trainer.kubeflow.org_trainjobs.yaml"
PYTORCHJOB_CRD = CRDS / "kubeflow.org_pytorchjobs.yaml"


@functools.cache
def crd(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def openapi_schema(path: Path, version: str) -> dict[str, Any]:
    (served,) = [v for v in crd(path)["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


def errors(path: Path, version: str, value: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(openapi_schema(path, version))
    return sorted(
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)
    )


def minimal_trainjob() -> dict[str, Any]:
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "tiny-1-a0", "namespace": "training"},
        "spec": {
            "runtimeRef": {"name": "torch-distributed"},
            "trainer": {
                "image": "registry.example.com/pretrain/trainer:1.2.3",
                "command": ["python", "-m", "trainer.train"],
                "args": ["--config", "/etc/pretrain/config.json"],
                "numNodes": 2,
                "numProcPerNode": 8,
                "resourcesPerNode": {"limits": {"nvidia.com/gpu": 8}},
                "env": [{"name": "PRETRAIN_ATTEMPT", "value": "0"}],
            },
            "suspend": True,
        },
    }


def test_the_trainjob_crd_is_trainer_v2_trainjob_v1alpha1():
    trainjob = crd(TRAINJOB_CRD)
    assert trainjob["kind"] == "CustomResourceDefinition"
    assert trainjob["metadata"]["name"] == "trainjobs.trainer.kubeflow.org"
    assert trainjob["spec"]["group"] == "trainer.kubeflow.org"
    assert trainjob["spec"]["names"]["kind"] == "TrainJob"
    assert trainjob["spec"]["scope"] == "Namespaced"
    [version] = trainjob["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert openapi_schema(TRAINJOB_CRD, "v1alpha1")["properties"]["spec"]["required"] == [
        "runtimeRef"
    ]


def test_the_pytorchjob_crd_is_training_operator_pytorchjob_v1():
    pytorchjob = crd(PYTORCHJOB_CRD)
    assert pytorchjob["metadata"]["name"] == "pytorchjobs.kubeflow.org"
    assert pytorchjob["spec"]["names"]["kind"] == "PyTorchJob"
    assert "v1" in [v["name"] for v in pytorchjob["spec"]["versions"]]


def test_a_minimal_trainjob_is_accepted():
    assert errors(TRAINJOB_CRD, "v1alpha1", minimal_trainjob()) == []


@pytest.mark.parametrize(
    ("field", "change", "complaint"),
    [
        ("spec", lambda spec: spec.pop("runtimeRef"), "'runtimeRef' is a required property"),
        (
            "spec.runtimeRef",
            lambda spec: spec["runtimeRef"].pop("name"),
            "'name' is a required property",
        ),
        (
            "spec.trainer.numNodes",
            lambda spec: spec["trainer"].update(numNodes="two"),
            "'two' is not of type 'integer'",
        ),
        (
            "spec.trainer.command",
            lambda spec: spec["trainer"].update(command="python"),
            "'python' is not of type 'array'",
        ),
        ("spec.suspend", lambda spec: spec.update(suspend="yes"), "'yes' is not of type 'boolean'"),
    ],
)
def test_a_wrong_trainjob_is_refused_naming_the_field(field, change, complaint):
    trainjob = minimal_trainjob()
    change(trainjob["spec"])
    assert errors(TRAINJOB_CRD, "v1alpha1", trainjob) == [f"{field}: {complaint}"]


def test_every_vendored_crd_is_listed_with_its_source_and_licence():
    readme = (CRDS / "README.md").read_text()
    vendored = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert vendored == ["kubeflow.org_pytorchjobs.yaml", "trainer.kubeflow.org_trainjobs.yaml"]
    assert all(f"| {name} | github.com/kubeflow/" in readme for name in vendored)
    assert "Apache License" in (CRDS / "LICENSE").read_text()
