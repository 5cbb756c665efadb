"""The chart lints clean, renders valid Kubernetes objects in every scenario, and its values
are typed, documented and refused when wrong."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm.chart import (
    CHART,
    KUBERNETES_VERSION,
    NAMESPACE,
    ROOT,
    SCENARIOS,
    Rendered,
    render,
    scenario_values,
)
from tests.helm.conftest import SCENARIO_NAMES

# Kinds whose schema is a CRD's, which kubernetes-validate does not carry.
CUSTOM_KINDS = {"ServiceMonitor", "ClusterTrainingRuntime"}
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)

scenarios = pytest.mark.parametrize("scenario", SCENARIO_NAMES)


def test_ci_holds_one_values_file_per_install_scenario() -> None:
    assert set(SCENARIOS) == {"external", "ingress", "servicemonitor", "existing-secret", "trainer"}


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]


@scenarios
def test_chart_lints_clean_in_strict_mode(scenario: str) -> None:
    report = helm_python.lint(CHART, scenario_values(scenario), strict=True, namespace="pretrain")
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and serious == [], (report["errors"], serious)


@scenarios
def test_every_manifest_validates_against_kubernetes_strictly(
    renders: dict[str, Rendered], scenario: str
) -> None:
    checked = 0
    for obj in renders[scenario].objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        manifest = {key: value for key, value in obj.items() if key != "_template"}
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{obj['_template']}: {obj['kind']} {obj['metadata']['name']}: {exc.message}"
            )
        checked += 1
    assert checked >= 10


@scenarios
def test_object_names_are_unique_per_kind_and_namespace(
    renders: dict[str, Rendered], scenario: str
) -> None:
    keys = [
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        for o in renders[scenario].objects
    ]
    assert len(keys) == len(set(keys))


# --------------------------------------------------------------------------- values and schema


def test_schema_is_valid_draft_7_and_accepts_the_defaults() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


@scenarios
def test_schema_accepts_every_scenario(scenario: str) -> None:
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(chart.merge_values(scenario_values(scenario)))


def schema_errors(values: dict[str, Any]) -> list[jsonschema.ValidationError]:
    merged = helm_python.Chart.load(CHART).merge_values(values)
    return list(jsonschema.Draft7Validator(SCHEMA).iter_errors(merged))


def test_schema_rejects_a_replica_count_that_is_not_a_number() -> None:
    values = {"api": {"replicaCount": "two"}}
    with pytest.raises(helm_python.HelmError) as refused:
        render(values)
    assert "replicaCount" in str(refused.value) and "integer" in str(refused.value)
    [error] = schema_errors(values)
    assert list(error.absolute_path) == ["api", "replicaCount"]


def test_schema_rejects_a_misspelt_key() -> None:
    with pytest.raises(helm_python.HelmError) as refused:
        render({"api": {"replicas": 3}})
    assert "replicas" in str(refused.value)


def test_schema_rejects_a_short_admin_token_that_production_would_refuse() -> None:
    [error] = schema_errors({"adminToken": "changeme"})
    assert list(error.absolute_path) == ["adminToken"]
    assert schema_errors({"adminToken": "x" * 16}) == []


def test_schema_rejects_a_sqlite_database_url() -> None:
    [error] = schema_errors({"database": {"url": "sqlite:///x.db"}})
    assert list(error.absolute_path) == ["database", "url"]


def test_schema_needs_both_urls_unless_an_existing_secret_holds_them() -> None:
    empty = {"database": {"url": ""}, "redis": {"url": ""}}
    paths = sorted(list(e.absolute_path) for e in schema_errors(empty))
    assert paths == [["database", "url"], ["redis", "url"]]
    assert schema_errors({**empty, "secret": {"existingSecret": "mine"}}) == []


def test_schema_refuses_trainer_tolerations_that_settings_could_not_read() -> None:
    # Settings.tolerations is list[dict[str, str]]: a number would crash every pod at start.
    toleration = {
        "key": "gpu",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 30,
    }
    [error] = schema_errors({"jobs": {"tolerations": [toleration]}})
    assert list(error.absolute_path) == ["jobs", "tolerations", 0, "tolerationSeconds"]


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def walk_values(values: dict[str, Any], node: dict[str, Any], path: str = "") -> list[str]:
    """Paths in `values` that the schema node has no entry for."""
    missing = []
    node = resolve(node)
    for key, value in values.items():
        here = f"{path}.{key}".lstrip(".")
        if key in node.get("properties", {}):
            child = node["properties"][key]
        elif isinstance(node.get("additionalProperties"), dict):
            child = node["additionalProperties"]
        else:
            missing.append(here)
            continue
        if isinstance(value, dict):
            missing += walk_values(value, child, here)
    return missing


# Kubernetes' own types, typed field by field in the schema; values.yaml sets only some fields.
KUBERNETES_TYPES = {"#/definitions/podSecurityContext", "#/definitions/securityContext"}


def walk_schema(node: dict[str, Any], values: dict[str, Any], path: str = "") -> list[str]:
    """Schema properties that values.yaml does not set (so does not document)."""
    missing = []
    for key, child in resolve(node).get("properties", {}).items():
        here = f"{path}.{key}".lstrip(".")
        if key not in values:
            missing.append(here)
        elif isinstance(values[key], dict) and child.get("$ref") not in KUBERNETES_TYPES:
            missing += walk_schema(child, values[key], here)
    return missing


def test_every_value_in_values_yaml_has_a_schema_entry() -> None:
    assert walk_values(VALUES, SCHEMA) == []


def test_every_schema_property_is_set_in_values_yaml() -> None:
    # `global` is Helm's, set by parent charts.
    assert walk_schema(SCHEMA, VALUES) == ["global"]


def test_objects_in_the_schema_refuse_unknown_keys_unless_they_are_free_form_maps() -> None:
    open_objects = []

    def visit(node: dict[str, Any], path: str) -> None:
        node = resolve(node)
        if "properties" in node and node.get("additionalProperties") is not False:
            open_objects.append(path)
        for key, child in node.get("properties", {}).items():
            visit(child, f"{path}.{key}".lstrip("."))

    visit(SCHEMA, "")
    assert open_objects == []


KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$")


def test_every_value_is_documented_by_a_comment_where_it_is_set() -> None:
    undocumented = []
    previous = ""
    for number, line in enumerate(VALUES_TEXT.splitlines(), start=1):
        if not line.strip():
            continue
        match = KEY_LINE.match(line)
        is_leaf = match is not None and match.group(3).split("#")[0].strip() != ""
        if is_leaf and not previous.lstrip().startswith("#") and "#" not in match.group(3):
            undocumented.append(f"{number}: {line.strip()}")
        previous = line
    assert undocumented == []


# --------------------------------------------------------------------------- NOTES.txt


def test_notes_say_how_to_reach_the_api_take_the_admin_token_and_submit_a_job(
    default: Rendered,
) -> None:
    notes = default.notes
    assert "port-forward service/po-pretrain-orchestrator-api 8000:8000" in notes
    assert "get secret po-pretrain-orchestrator" in notes and "{.data.admin-token}" in notes
    assert "pretrainctl tokens create --role submitter" in notes
    assert "pretrainctl tokens create --local" in notes
    assert "pretrainctl submit examples/tiny-cpu.yaml" in notes
    assert (ROOT / "examples" / "tiny-cpu.yaml").is_file()


def test_notes_point_at_the_ingress_host_when_there_is_one(renders: dict[str, Rendered]) -> None:
    notes = renders["ingress"].notes
    assert "export PRETRAIN_API_URL=https://pretrain.example.com" in notes
    assert "port-forward" not in notes


def test_notes_use_the_existing_secret_and_its_key(renders: dict[str, Rendered]) -> None:
    assert "get secret pretrain-credentials" in renders["existing-secret"].notes
    assert "{.data.ADMIN_TOKEN}" in renders["existing-secret"].notes


def test_notes_warn_when_checkpoints_have_no_volume(renders: dict[str, Rendered]) -> None:
    assert "jobs.checkpointPvc is empty" in renders["default"].notes
    assert "jobs.checkpointPvc is empty" not in renders["external"].notes


# --------------------------------------------------------------------------- docs/install.md


def merge(into: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def test_the_documented_install_line_renders_and_names_objects_the_chart_creates() -> None:
    section = (ROOT / "docs" / "install.md").read_text()
    [command] = re.findall(r"^helm install (?:.*\\\n)*.*$", section, flags=re.M)
    words = shlex.split(command.replace("\\\n", " "))
    release, chart = words[2], words[3]
    assert chart == "helm/pretrain-orchestrator"
    assert words[words.index("--namespace") + 1] == NAMESPACE
    values: dict[str, Any] = {}
    for i, word in enumerate(words):
        if word == "--set":
            merge(values, helm_python.parse_set_string(words[i + 1]))
    assert len(values) >= 5, values
    rendered = render(values, release=release)
    service = rendered.one("Service", "api")["metadata"]["name"]
    [secret] = [
        s["metadata"]["name"] for s in rendered.of_kind("Secret") if "admin-token" in s["data"]
    ]
    assert f"service/{service} " in section and f"deploy/{service} " in section
    assert f"get secret {secret} " in section
    assert rendered.settings()["data"]["PRETRAIN_NAMESPACE"] == values["jobs"]["namespace"]
