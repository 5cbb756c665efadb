"""The Role grants exactly what the Kubernetes backend calls, read from its source, and nothing
cluster-wide: a new API call in the backend fails here until the chart grants it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helm.chart import ROOT, Rendered, pod_spec, render

BACKEND = ROOT / "service" / "controller" / "backends" / "kubernetes.py"
MANIFESTS = ROOT / "service" / "controller" / "manifests.py"
# The client's method names: <action>_namespaced_<kind>[_with_http_info].
CLIENT_METHOD = re.compile(
    r"^(create|read|get|patch|replace|delete_collection|delete|list)_namespaced_(\w+?)(_with_http_info)?$"
)
VERB = {
    "create": "create",
    "read": "get",
    "get": "get",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
    "delete_collection": "deletecollection",
    "list": "list",
}
SUBRESOURCES = ("log", "status", "scale", "eviction", "binding")
# The API classes the mapping above understands.
UNDERSTOOD_APIS = {"ApiClient", "BatchV1Api", "CoreV1Api", "CustomObjectsApi"}
# API groups of the typed kinds the backend names that are not in the core group.
GROUP_OF_KIND = {"job": "batch"}

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)


def module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "string" constants (GROUP, PLURAL, ...)."""
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def resource_of(kind: str, constants: dict[str, str]) -> tuple[str, str]:
    """(apiGroup, resource) that a client method's kind names."""
    if kind == "custom_object":
        return constants["GROUP"], constants["PLURAL"]
    for sub in SUBRESOURCES:
        if kind.endswith("_" + sub):
            group, base = resource_of(kind.removesuffix("_" + sub), constants)
            return group, f"{base}/{sub}"
    return GROUP_OF_KIND.get(kind, ""), kind.replace("_", "") + "s"


def rules_the_backend_needs() -> set[Rule]:
    tree = ast.parse(BACKEND.read_text(), filename=str(BACKEND))
    constants = module_strings(tree)
    needed: set[Rule] = set()
    # Every client method the module names, called or passed around (the delete loop).
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (match := CLIENT_METHOD.match(node.attr)):
            action, kind = match.group(1), match.group(2)
            needed.add((*resource_of(kind, constants), VERB[action]))
    # A function that runs a `watch.Watch().stream(...)` watches what it lists.
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        streams = any(
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "stream"
            for n in ast.walk(function)
        )
        if streams:
            for n in ast.walk(function):
                if (
                    isinstance(n, ast.Attribute)
                    and (match := CLIENT_METHOD.match(n.attr))
                    and match.group(1) == "list"
                ):
                    needed.add((*resource_of(match.group(2), constants), "watch"))
    # Owned objects that block their owner's deletion need `update` on the owner's finalizers
    # (the OwnerReferencesPermissionEnforcement admission plugin). manifests.py names each
    # owner by its kind constant: the PyTorchJob and the tokenizer's batch Job.
    manifests = ast.parse(MANIFESTS.read_text(), filename=str(MANIFESTS))
    manifest_constants = module_strings(manifests)
    owner_resources = {
        "PYTORCHJOB_KIND": (constants["GROUP"], constants["PLURAL"]),
        "BATCH_JOB_KIND": ("batch", "jobs"),
    }
    for call in ast.walk(manifests):
        if not (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "V1OwnerReference"):
            continue
        keywords = {k.arg: k.value for k in call.keywords}
        if getattr(keywords.get("block_owner_deletion"), "value", None) is not True:
            continue
        kind = keywords["kind"]
        assert isinstance(kind, ast.Name) and kind.id in owner_resources, ast.dump(kind)
        assert kind.id in manifest_constants
        group, resource = owner_resources[kind.id]
        needed.add((group, resource + "/finalizers", "update"))
    return needed


def granted(role: dict) -> set[Rule]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_backend_uses_only_api_classes_the_derivation_understands() -> None:
    tree = ast.parse(BACKEND.read_text())
    apis = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "client"
        and node.func.attr.endswith(("Api", "ApiClient"))
    }
    assert apis == UNDERSTOOD_APIS


def test_the_derivation_finds_the_calls_the_backend_is_known_to_make() -> None:
    needed = rules_the_backend_needs()
    assert {
        ("kubeflow.org", "pytorchjobs", "create"),
        ("kubeflow.org", "pytorchjobs", "watch"),
        ("", "configmaps", "patch"),
        ("", "secrets", "delete"),
        ("", "pods", "list"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("batch", "jobs/finalizers", "update"),
        ("kubeflow.org", "pytorchjobs/finalizers", "update"),
    } <= needed
    assert ("", "pods/log", "get") not in needed  # the backend reads pod status, never logs


def test_role_grants_only_the_verbs_the_backend_calls(default: Rendered) -> None:
    assert granted(default.one("Role")) == rules_the_backend_needs()


@pytest.mark.parametrize(
    "scenario", ["default", "external", "ingress", "servicemonitor", "existing-secret"]
)
def test_nothing_cluster_wide_and_no_wildcards(renders: dict[str, Rendered], scenario: str) -> None:
    rendered = renders[scenario]
    assert rendered.of_kind("ClusterRole") == [] and rendered.of_kind("ClusterRoleBinding") == []
    for role in rendered.of_kind("Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], rule
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule


def test_role_and_binding_live_in_the_jobs_namespace_and_bind_the_release_service_account(
    renders: dict[str, Rendered],
) -> None:
    rendered = renders["external"]  # jobs.namespace: training
    role, binding = rendered.one("Role"), rendered.one("RoleBinding")
    account = rendered.one("ServiceAccount")
    config = rendered.settings()
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "training"
    assert config["data"]["PRETRAIN_NAMESPACE"] == "training"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "pretrain"}
    ]


def test_only_the_controller_and_the_worker_mount_the_service_account_token(
    default: Rendered,
) -> None:
    # The worker's Celery task is the controller's reconcile (service/main.py): same calls.
    mounts = {
        workload["metadata"]["labels"]["app.kubernetes.io/component"]: pod_spec(workload).get(
            "automountServiceAccountToken"
        )
        for workload in default.workloads()
    }
    assert mounts == {
        "api": False,
        "controller": True,
        "worker": True,
        "watchdog": False,
        "migrations": False,
    }
    assert default.one("ServiceAccount")["automountServiceAccountToken"] is False
    root = (ROOT / "service" / "main.py").read_text()
    assert "tasks.make_app(settings, controller=lambda: controller(settings))" in root


def test_rbac_can_be_left_to_the_installer() -> None:
    rendered = render(
        {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "pretrain"}}
    )
    assert rendered.of_kind("Role") == [] and rendered.of_kind("RoleBinding") == []
    assert rendered.of_kind("ServiceAccount") == []
    assert {pod_spec(w).get("serviceAccountName") for w in rendered.of_kind("Deployment")} == {
        "pretrain"
    }


def test_backend_source_path_is_the_one_the_controller_loads() -> None:
    from service.controller.backends import kubernetes

    assert Path(kubernetes.__file__).resolve() == BACKEND
