"""The Role grants exactly what the Kubernetes backend calls, read from its source, and nothing
cluster-wide: a new API call in the backend fails here until the chart grants it.

Workloads of every kind go through `CustomObjectsApi`, by their row of the backend's kinds
table (`kinds.workload_kinds(settings)`: a pretrain attempt is a PyTorchJob or a TrainJob, as
the install chooses): a custom-object verb the backend names is needed on every row's
resource, `watch` on the rows the informer watches. Kueue's Workloads are read by the functions
that name `KUEUE_WORKLOAD`: the custom-object verbs those call, on Kueue's resource only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helm.chart import ROOT, Rendered, pod_spec, render

BACKEND = ROOT / "service" / "controller" / "backends" / "kubernetes"
MANIFESTS = ROOT / "service" / "controller" / "manifests"
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
UNDERSTOOD_APIS = {"ApiClient", "CoreV1Api", "CustomObjectsApi"}

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)


def module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "string" constants (PYTORCHJOB_KIND, ...)."""
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def backend_sources() -> list[ast.Module]:
    return [ast.parse(path.read_text(), filename=str(path)) for path in sorted(BACKEND.glob("*.py"))]


def kinds_for(workload: str = "kubeflow-pytorchjob") -> dict:
    """The backend's table with `Settings.kubernetes_workload` (the chart's `jobs.workload`)."""
    from service.controller.backends.kubernetes.kinds import workload_kinds
    from service.settings import Settings

    return workload_kinds(Settings(kubernetes_workload=workload))


def resources_of(kind: str, kinds: dict, *, watched_only: bool = False) -> set[tuple[str, str]]:
    """(apiGroup, resource) pairs that a client method's kind names."""
    if kind == "custom_object":
        rows = [row for row in kinds.values() if row.watched or not watched_only]
        return {(row.group, row.plural) for row in rows}
    for sub in SUBRESOURCES:
        if kind.endswith("_" + sub):
            return {
                (group, f"{base}/{sub}")
                for group, base in resources_of(
                    kind.removesuffix("_" + sub), kinds, watched_only=watched_only
                )
            }
    return {("", kind.replace("_", "") + "s")}


def kueue_rules() -> set[Rule]:
    """The custom-object verbs of the backend's functions that name Kueue's Workload."""
    from service.controller.backends.kubernetes.kinds import KUEUE_WORKLOAD

    needed: set[Rule] = set()
    for tree in backend_sources():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            names = {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}
            if "KUEUE_WORKLOAD" not in names:
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute) and (match := CLIENT_METHOD.match(node.attr)):
                    assert match.group(2) == "custom_object", node.attr
                    needed.add((KUEUE_WORKLOAD.group, KUEUE_WORKLOAD.plural, VERB[match.group(1)]))
    return needed


def rules_the_backend_needs(workload: str = "kubeflow-pytorchjob") -> set[Rule]:
    kinds = kinds_for(workload)
    needed: set[Rule] = kueue_rules()
    for tree in backend_sources():
        # Every client method the package names, called or held in the kinds table.
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and (match := CLIENT_METHOD.match(node.attr)):
                action, kind = match.group(1), match.group(2)
                needed |= {(*resource, VERB[action]) for resource in resources_of(kind, kinds)}
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
                        needed |= {
                            (*resource, "watch")
                            for resource in resources_of(match.group(2), kinds, watched_only=True)
                        }
    # Owned objects that block their owner's deletion need `update` on the owner's finalizers
    # (the OwnerReferencesPermissionEnforcement admission plugin). The manifests package makes
    # every owner reference through `pod.owned_by(API_VERSION, KIND, …)`, naming the owner by its
    # kind constant: a kind of the backend's table.
    manifests = [ast.parse(path.read_text(), filename=str(path)) for path in sorted(MANIFESTS.glob("*.py"))]
    manifest_constants = {name: value for tree in manifests for name, value in module_strings(tree).items()}
    owner_resources = {row.kind: (row.group, row.plural) for row in kinds.values()}
    from service.controller.backends.kubernetes.kinds import PRETRAIN_WORKLOADS

    not_chosen = {row.kind for row in PRETRAIN_WORKLOADS.values()} - set(owner_resources)
    calls = [node for tree in manifests for node in ast.walk(tree) if isinstance(node, ast.Call)]
    references = [c for c in calls if getattr(c.func, "attr", None) == "V1OwnerReference"]
    assert len(references) == 1, "owner references are made only by pod.owned_by"
    (reference,) = references
    assert any(k.arg == "block_owner_deletion" and getattr(k.value, "value", None) is True for k in reference.keywords)
    for call in (c for c in calls if getattr(c.func, "id", None) == "owned_by"):
        kind = call.args[1]
        assert isinstance(kind, ast.Name) and kind.id in manifest_constants, ast.dump(kind)
        if manifest_constants[kind.id] in not_chosen:
            continue  # the other way to run a pretrain attempt: this install creates none
        group, resource = owner_resources[manifest_constants[kind.id]]
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
    apis = {
        node.func.attr
        for tree in backend_sources()
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
    assert ("batch", "jobs", "watch") not in needed  # no informer watches tokenizer Jobs


def test_role_grants_only_the_verbs_the_backend_calls(default: Rendered) -> None:
    assert granted(default.one("Role")) == rules_the_backend_needs()


def test_with_trainjobs_the_role_grants_them_instead_of_pytorchjobs(
    renders: dict[str, Rendered],
) -> None:
    role = granted(renders["trainer"].one("Role"))
    assert role == rules_the_backend_needs("kubeflow-trainer")
    assert ("trainer.kubeflow.org", "trainjobs", "watch") in role
    assert ("trainer.kubeflow.org", "trainjobs/finalizers", "update") in role
    assert not any(resource.startswith("pytorchjobs") for _, resource, _ in role)


def test_kueue_workloads_are_only_listed() -> None:
    assert kueue_rules() == {("kueue.x-k8s.io", "workloads", "list")}


@pytest.mark.parametrize(
    "scenario", ["default", "external", "ingress", "servicemonitor", "existing-secret", "trainer"]
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

    assert Path(kubernetes.__file__).resolve().parent == BACKEND
