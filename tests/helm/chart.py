"""The chart rendered offline by Helm's own engine (helm-python-sdk), as `helm template` would.

`helm_python.Chart.render` forwards only name, namespace, revision and the install/upgrade
flags. The library under it also takes `kube_version` and `api_versions` (Helm's
`--kube-version` / `--api-versions`) in the same options object, so `render` passes them
through `helm_python._native` when a test needs `.Capabilities`: the one private call here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "pretrain-orchestrator"
SCENARIOS = {
    path.name.removesuffix("-values.yaml"): path
    for path in sorted((CHART / "ci").glob("*-values.yaml"))
}
RELEASE = "po"
NAMESPACE = "pretrain"
KUBERNETES_VERSION = "1.33.0"
MONITORING_API = "monitoring.coreos.com/v1"
HOOK = "helm.sh/hook"


@dataclass
class Rendered:
    """What one render produced: the files, and the objects in them (NOTES.txt aside)."""

    files: dict[str, str]
    objects: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for path, text in sorted(self.files.items()):
            if path.endswith("NOTES.txt"):
                continue
            for document in yaml.safe_load_all(text):
                if document:
                    self.objects.append({**document, "_template": path})

    @property
    def notes(self) -> str:
        return next(text for path, text in self.files.items() if path.endswith("NOTES.txt"))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> dict[str, Any]:
        found = [
            obj for obj in self.of_kind(kind) if component is None or component_of(obj) == component
        ]
        assert len(found) == 1, f"{len(found)} {kind} objects for component {component}"
        return found[0]

    def settings(self) -> dict[str, Any]:
        """The ConfigMap of PRETRAIN_* settings."""
        [config] = [
            c for c in self.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-config")
        ]
        return config

    def workloads(self) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] in ("Deployment", "Job")]

    def containers(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(workload, container) for every container and init container."""
        for workload in self.workloads():
            spec = pod_spec(workload)
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield workload, container


def component_of(obj: dict[str, Any]) -> str | None:
    return (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def scenario_values(name: str) -> dict[str, Any]:
    """A ci/ values file, parsed by Helm as `-f` would."""
    if name == "default":
        return {}
    return helm_python.values_from_yaml(SCENARIOS[name].read_text())


def render(
    values: dict[str, Any] | None = None,
    *,
    api_versions: Iterable[str] = (),
    chart_dir: Path = CHART,
    release: str = RELEASE,
) -> Rendered:
    """Render as a first `helm install` would; `api_versions` are what the cluster serves."""
    with helm_python.Chart.load(chart_dir) as chart:
        options = {"name": release, "namespace": NAMESPACE, "is_install": True}
        api_versions = list(api_versions)
        if not api_versions:
            return Rendered(chart.render(values or {}, **options))
        options |= {"api_versions": api_versions, "kube_version": f"v{KUBERNETES_VERSION}"}
        payload = _native.call_string(
            "helm_render", chart._raw(), json.dumps(values or {}), json.dumps(options)
        )
        return Rendered(json.loads(payload))
