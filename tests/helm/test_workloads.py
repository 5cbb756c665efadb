"""What the chart runs: each component's real `pretrainctl` command, locked-down containers,
settings that `service.settings.Settings` reads, the migrations hook, the Secret, the
ServiceMonitor and the Grafana dashboards."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import kubernetes_validate
import pytest

from pretrainctl.cli import cli
from service.settings import Settings
from tests.helm.chart import (
    CHART,
    HOOK,
    KUBERNETES_VERSION,
    MONITORING_API,
    Rendered,
    component_of,
    pod_spec,
    render,
)
from tests.helm.conftest import SCENARIO_NAMES

scenarios = pytest.mark.parametrize("scenario", SCENARIO_NAMES)
COMMANDS = {
    "api": ["pretrainctl", "serve"],
    "controller": ["pretrainctl", "controller"],
    "worker": ["pretrainctl", "worker", "--concurrency", "2"],
    "watchdog": ["pretrainctl", "watchdog", "run", "--consumer", "watchdog-1"],
    "migrations": ["pretrainctl", "db", "upgrade"],
}


def click_command(argv: list[str]) -> click.Command:
    """The `pretrainctl` command argv names, its options parsed as click would (errors raise)."""
    assert argv[0] == "pretrainctl"
    command: click.Command = cli
    args = argv[1:]
    while isinstance(command, click.Group) and args and args[0] in command.commands:
        command, args = command.commands[args[0]], args[1:]
    assert not isinstance(command, click.Group), f"{argv} names a group, not a command"
    command.make_context(argv[0], list(args))
    return command


# --------------------------------------------------------------------------- commands


def test_each_component_runs_its_pretrainctl_command(default: Rendered) -> None:
    commands = {component_of(w): c["command"] for w, c in default.containers()}
    assert commands == COMMANDS
    for argv in commands.values():
        click_command(argv)


def test_the_cli_check_rejects_a_command_that_does_not_exist() -> None:
    with pytest.raises(AssertionError):
        click_command(["pretrainctl", "watchdog"])
    with pytest.raises(click.UsageError):
        click_command(["pretrainctl", "worker", "--threads", "2"])


def test_api_probes_readiness_on_readyz_and_liveness_on_healthz(default: Rendered) -> None:
    from service.api.routes.health import router

    [(_, api)] = [(w, c) for w, c in default.containers() if component_of(w) == "api"]
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"/readyz", "/healthz"} <= {route.path for route in router.routes}
    [port] = api["ports"]
    service = default.one("Service", "api")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"] == "http"


def test_services_and_budgets_select_only_the_api_pods(default: Rendered) -> None:
    api = default.one("Deployment", "api")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    for selector in (
        default.one("Service", "api")["spec"]["selector"],
        default.one("PodDisruptionBudget", "api")["spec"]["selector"]["matchLabels"],
    ):
        assert (
            selector.items() <= pod_labels.items()
            and selector["app.kubernetes.io/component"] == "api"
        )
    for deployment in default.of_kind("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_watchdog_is_exactly_one_pod_recreated_under_a_fixed_consumer_name(
    renders: dict[str, Rendered],
) -> None:
    for rendered in renders.values():
        watchdog = rendered.one("Deployment", "watchdog")
        assert watchdog["spec"]["replicas"] == 1
        assert watchdog["spec"]["strategy"] == {"type": "Recreate"}


def test_controller_runs_one_replica_by_default_and_more_when_asked(
    renders: dict[str, Rendered],
) -> None:
    assert renders["default"].one("Deployment", "controller")["spec"]["replicas"] == 1
    assert renders["external"].one("Deployment", "controller")["spec"]["replicas"] == 2
    assert (
        renders["external"].one("PodDisruptionBudget", "controller")["spec"]["maxUnavailable"] == 1
    )


# --------------------------------------------------------------------------- security


@scenarios
def test_every_container_runs_non_root_read_only_without_capabilities(
    renders: dict[str, Rendered], scenario: str
) -> None:
    containers = list(renders[scenario].containers())
    assert len(containers) == 5
    for workload, container in containers:
        pod = pod_spec(workload)["securityContext"]
        context = container["securityContext"]
        where = f"{workload['metadata']['name']}/{container['name']}"
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert context["runAsNonRoot"] is True, where
        assert context["readOnlyRootFilesystem"] is True, where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"] == {"drop": ["ALL"]}, where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert "privileged" not in context, where


@scenarios
def test_every_container_can_write_tmp_and_its_state_dir(
    renders: dict[str, Rendered], scenario: str
) -> None:
    state_dir = renders[scenario].settings()["data"]["PRETRAIN_STATE_DIR"]
    for workload, container in renders[scenario].containers():
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert "emptyDir" in mounts["/tmp"] and "emptyDir" in mounts[state_dir], workload[
            "metadata"
        ]["name"]


@scenarios
def test_every_container_has_requests_and_a_memory_limit(
    renders: dict[str, Rendered], scenario: str
) -> None:
    for workload, container in renders[scenario].containers():
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), workload["metadata"]["name"]
        assert "memory" in resources["limits"], workload["metadata"]["name"]


# --------------------------------------------------------------------------- settings


def env_names(rendered: Rendered) -> set[str]:
    names = set(rendered.settings()["data"])
    for _, container in rendered.containers():
        names |= {entry["name"] for entry in container.get("env", [])}
    return names


@scenarios
def test_every_pretrain_variable_the_chart_sets_is_a_real_setting(
    renders: dict[str, Rendered], scenario: str
) -> None:
    real = {f"PRETRAIN_{name.upper()}" for name in Settings.model_fields}
    names = env_names(renders[scenario])
    assert all(name.startswith("PRETRAIN_") for name in names)
    assert names - real == set()
    assert {
        "PRETRAIN_BACKEND",
        "PRETRAIN_DATABASE_URL",
        "PRETRAIN_REDIS_URL",
        "PRETRAIN_ADMIN_TOKEN",
    } <= names


def container_environment(rendered: Rendered, component: str) -> dict[str, str]:
    """The PRETRAIN_* variables a component's container sees, Secret values resolved."""
    [container] = [c for w, c in rendered.containers() if component_of(w) == component]
    secrets = {s["metadata"]["name"]: s["data"] for s in rendered.of_kind("Secret")}
    env = dict(rendered.settings()["data"]) if container.get("envFrom") else {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
    return env


@pytest.mark.parametrize("component", ["api", "controller", "worker", "watchdog", "migrations"])
@pytest.mark.parametrize("scenario", ["default", "external"])
def test_the_settings_each_container_sees_pass_production_validation(
    renders: dict[str, Rendered], scenario: str, component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"PRETRAIN_{name.upper()}", raising=False)
    for name, value in container_environment(renders[scenario], component).items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.environment == "production"
    assert settings.database_url.startswith("postgresql+psycopg://")
    if component != "migrations":
        assert settings.backend == "kubernetes" and settings.redis_url
        assert urlsplit(settings.resolved_redis_url).password, "Redis AUTH: the password from the Secret"
        assert settings.checkpoint_root == "/checkpoints"
    if scenario == "external" and component == "controller":
        assert settings.namespace == "training"
        assert settings.tolerations == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        assert settings.node_selector == {"nvidia.com/gpu.present": "true"}
        assert settings.checkpoint_pvc == "pretrain-checkpoints"


def test_trainers_report_to_the_api_service(default: Rendered) -> None:
    service = default.one("Service", "api")
    url = default.settings()["data"]["PRETRAIN_INGEST_URL"]
    assert (
        url
        == f"http://{service['metadata']['name']}.pretrain.svc:{service['spec']['ports'][0]['port']}"
    )


def test_the_admin_token_reaches_only_the_api(default: Rendered) -> None:
    holders = {
        component_of(w)
        for w, c in default.containers()
        if "PRETRAIN_ADMIN_TOKEN" in {e["name"] for e in c.get("env", [])}
    }
    assert holders == {"api"}


def test_a_generated_admin_token_is_long_enough_for_production(default: Rendered) -> None:
    token = container_environment(default, "api")["PRETRAIN_ADMIN_TOKEN"]
    assert len(token) >= 16 and token.isalnum()


REDIS_READERS = {"api", "controller", "worker", "watchdog"}


@pytest.mark.parametrize("scenario", ["default", "external"])
def test_every_process_that_reads_redis_gets_its_password_from_the_secret(
    renders: dict[str, Rendered], scenario: str
) -> None:
    rendered = renders[scenario]
    refs = {
        component_of(w): e["valueFrom"]["secretKeyRef"]
        for w, c in rendered.containers()
        for e in c.get("env", [])
        if e["name"] == "PRETRAIN_REDIS_PASSWORD"
    }
    [release_secret] = [s for s in rendered.of_kind("Secret") if not hook_annotations(s)]
    assert set(refs) == REDIS_READERS  # not the migrations hook: it never talks to Redis
    assert {(r["name"], r["key"]) for r in refs.values()} == {(release_secret["metadata"]["name"], "redis-password")}
    passwords = {container_environment(rendered, c)["PRETRAIN_REDIS_PASSWORD"] for c in REDIS_READERS}
    assert len(passwords) == 1
    [password] = passwords
    if scenario == "external":
        assert password == "ci-redis-password-0123456789"  # the one given
    else:
        assert len(password) >= 32 and password.isalnum()  # generated


def test_redis_auth_can_be_turned_off_for_a_redis_no_one_else_reaches() -> None:
    rendered = render({"redis": {"auth": False}})
    assert not any(
        e["name"] == "PRETRAIN_REDIS_PASSWORD" for _, c in rendered.containers() for e in c.get("env", [])
    )
    [release_secret] = [s for s in rendered.of_kind("Secret") if not hook_annotations(s)]
    assert "redis-password" not in release_secret["data"]


def test_images_default_to_the_app_version_and_a_digest_wins(
    default: Rendered, renders: dict[str, Rendered]
) -> None:
    images = {c["image"] for _, c in default.containers()}
    assert images == {"pretrain-orchestrator/service:0.1.0"}
    assert (
        default.settings()["data"]["PRETRAIN_TRAINER_IMAGE"]
        == "pretrain-orchestrator/trainer:0.1.0"
    )
    pinned = {c["image"] for _, c in renders["external"].containers()}
    assert pinned == {
        "registry.example.com/ml/pretrain-orchestrator@sha256:" + "0123456789abcdef" * 4
    }


# --------------------------------------------------------------------------- migrations


def hook_annotations(obj: dict[str, Any]) -> dict[str, str]:
    return {
        k: v
        for k, v in (obj["metadata"].get("annotations") or {}).items()
        if k.startswith("helm.sh/hook")
    }


def test_migrations_hook_job_runs_db_upgrade_before_install_and_upgrade(default: Rendered) -> None:
    job = default.one("Job", "migrations")
    [container] = pod_spec(job)["containers"]
    assert container["command"] == ["pretrainctl", "db", "upgrade"]
    annotations = hook_annotations(job)
    assert set(annotations[HOOK].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    # The chart's ServiceAccount is not there yet during a first install's hooks.
    assert "serviceAccountName" not in pod_spec(job)


def test_the_secret_the_hook_reads_exists_before_the_hook_runs(default: Rendered) -> None:
    job = default.one("Job", "migrations")
    [container] = pod_spec(job)["containers"]
    [url] = [e for e in container["env"] if e["name"] == "PRETRAIN_DATABASE_URL"]
    name = url["valueFrom"]["secretKeyRef"]["name"]
    [secret] = [s for s in default.of_kind("Secret") if s["metadata"]["name"] == name]
    secret_hook, job_hook = hook_annotations(secret), hook_annotations(job)
    assert secret_hook[HOOK] == job_hook[HOOK]
    assert int(secret_hook["helm.sh/hook-weight"]) < int(job_hook["helm.sh/hook-weight"])
    assert "hook-succeeded" in secret_hook["helm.sh/hook-delete-policy"]
    assert set(secret["data"]) == {
        url["valueFrom"]["secretKeyRef"]["key"]
    }  # the URL, not the token
    # Everything else reads the release's own Secret, which is no hook.
    [release_secret] = [s for s in default.of_kind("Secret") if not hook_annotations(s)]
    assert set(release_secret["data"]) == {"database-url", "redis-url", "redis-password", "admin-token"}


def test_migrations_can_be_left_to_the_installer() -> None:
    rendered = render({"migrations": {"enabled": False}})
    assert rendered.of_kind("Job") == []
    assert [s for s in rendered.of_kind("Secret") if hook_annotations(s)] == []


# --------------------------------------------------------------------------- existing Secret


def test_an_existing_secret_replaces_the_charts_own(renders: dict[str, Rendered]) -> None:
    rendered = renders["existing-secret"]
    assert rendered.of_kind("Secret") == []
    refs = [
        entry["valueFrom"]["secretKeyRef"]
        for _, container in rendered.containers()
        for entry in container.get("env", [])
        if "valueFrom" in entry
    ]
    assert {ref["name"] for ref in refs} == {"pretrain-credentials"}
    assert {ref["key"] for ref in refs} == {"DATABASE_URL", "REDIS_URL", "REDIS_PASSWORD", "ADMIN_TOKEN"}
    for workload in rendered.workloads():
        annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
        assert "checksum/secret" not in annotations


# --------------------------------------------------------------------------- ServiceMonitor


@pytest.mark.parametrize(
    ("enabled", "served", "expected"),
    [(True, True, 1), (True, False, 0), (False, True, 0), (False, False, 0)],
)
def test_service_monitor_appears_only_when_enabled_and_the_cluster_serves_its_api(
    enabled: bool, served: bool, expected: int
) -> None:
    rendered = render(
        {"serviceMonitor": {"enabled": enabled}},
        api_versions=[MONITORING_API] if served else ["v1"],
    )
    assert len(rendered.of_kind("ServiceMonitor")) == expected
    assert ("no ServiceMonitor was created" in rendered.notes) == (enabled and not served)


def test_service_monitor_scrapes_the_api_services_metrics_port(
    renders: dict[str, Rendered],
) -> None:
    rendered = renders["servicemonitor"]
    monitor, service = rendered.one("ServiceMonitor"), rendered.one("Service", "api")
    assert monitor["apiVersion"] == MONITORING_API
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["pretrain"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"


# --------------------------------------------------------------------------- dashboards


def dashboard_maps(rendered: Rendered) -> list[dict[str, Any]]:
    return [
        c for c in rendered.of_kind("ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]
    ]


def test_each_dashboard_json_in_the_chart_becomes_one_labelled_config_map(
    default: Rendered,
) -> None:
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    maps = dashboard_maps(default)
    assert sorted(key for m in maps for key in m["data"]) == files
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        [(name, text)] = config_map["data"].items()
        assert json.loads(text) == json.loads((CHART / "dashboards" / name).read_text())


@pytest.fixture(scope="module")
def chart_with_two_dashboards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart whose dashboards/ holds two JSON files and a file that is not one."""
    chart = tmp_path_factory.mktemp("chart") / "pretrain-orchestrator"
    shutil.copytree(CHART, chart)
    shutil.rmtree(chart / "dashboards", ignore_errors=True)
    (chart / "dashboards").mkdir()
    (chart / "dashboards" / "Channel Loss.json").write_text(
        json.dumps({"title": "Channel loss", "panels": []})
    )
    (chart / "dashboards" / "fleet.json").write_text(json.dumps({"title": "Fleet"}))
    (chart / "dashboards" / "README.md").write_text("not a dashboard\n")
    return chart


def test_dashboard_config_maps_follow_the_files_and_the_sidecar_settings(
    chart_with_two_dashboards: Path,
) -> None:
    values = {
        "dashboards": {
            "label": "grafana_dashboard_v2",
            "labelValue": "yes",
            "folder": "Pretraining",
            "namespace": "monitoring",
        }
    }
    rendered = render(values, chart_dir=chart_with_two_dashboards)
    maps = [
        c
        for c in rendered.of_kind("ConfigMap")
        if "grafana_dashboard_v2" in c["metadata"]["labels"]
    ]
    by_name = {m["metadata"]["name"]: m for m in maps}
    assert sorted(by_name) == [
        "po-pretrain-orchestrator-dashboard-channel-loss",
        "po-pretrain-orchestrator-dashboard-fleet",
    ]
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard_v2"] == "yes"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "Pretraining"}
        assert config_map["metadata"]["namespace"] == "monitoring"
        manifest = {k: v for k, v in config_map.items() if k != "_template"}
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    # A file name that is no valid ConfigMap key becomes one.
    loss = by_name["po-pretrain-orchestrator-dashboard-channel-loss"]["data"]["Channel-Loss.json"]
    assert json.loads(loss)["title"] == "Channel loss"


def test_dashboards_can_be_switched_off(chart_with_two_dashboards: Path) -> None:
    rendered = render({"dashboards": {"enabled": False}}, chart_dir=chart_with_two_dashboards)
    assert dashboard_maps(rendered) == []
    assert len(dashboard_maps(render(chart_dir=chart_with_two_dashboards))) == 2


# --------------------------------------------------------------------------- NetworkPolicy


def trainer_policy(rendered: Rendered) -> dict[str, Any]:
    return next(p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-trainers"))


def test_the_trainer_policy_selects_every_pod_the_controller_creates(default: Rendered) -> None:
    from tests.service.controller.test_manifests import rendered_case
    from tests.service.controller.test_tokenizer_manifests import manifests as tokenizer_manifests

    selector = trainer_policy(default)["spec"]["podSelector"]["matchLabels"]
    pytorchjob = rendered_case("tiny-cpu")[1]["pytorchjob"]
    pod_labels = [spec["template"]["metadata"]["labels"] for spec in pytorchjob["spec"]["pytorchReplicaSpecs"].values()]
    pod_labels.append(tokenizer_manifests()["job"]["spec"]["template"]["metadata"]["labels"])
    assert all(selector.items() <= labels.items() for labels in pod_labels)
    # ... and none of the release's own pods, which the trainers must not reach.
    assert not any(
        selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        for workload in default.workloads()
    )


@scenarios
def test_trainer_pods_reach_each_other_the_api_dns_and_their_storage_only(
    renders: dict[str, Rendered], scenario: str
) -> None:
    rendered = renders[scenario]
    policy = trainer_policy(rendered)
    spec = policy["spec"]
    selector = spec["podSelector"]["matchLabels"]
    jobs_namespace = "training" if scenario == "external" else "pretrain"
    assert policy["metadata"]["namespace"] == jobs_namespace
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"from": [{"podSelector": {"matchLabels": selector}}]}]
    api = rendered.one("Deployment", "api")
    [port] = api["spec"]["template"]["spec"]["containers"][0]["ports"]
    to_trainers, to_api, to_dns, *to_storage = spec["egress"]
    assert to_trainers == {"to": [{"podSelector": {"matchLabels": selector}}]}
    [api_peer] = to_api["to"]
    assert api_peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "pretrain"}}
    assert api_peer["podSelector"]["matchLabels"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert to_api["ports"] == [{"port": port["containerPort"], "protocol": "TCP"}]
    assert {p["port"] for p in to_dns["ports"]} == {53}
    assert [peer["podSelector"] for peer in to_dns["to"]] == [{"matchLabels": {"k8s-app": "kube-dns"}}]
    if scenario == "external":
        assert to_storage == [{"to": [{"ipBlock": {"cidr": "10.0.40.0/24"}}], "ports": [{"port": 443, "protocol": "TCP"}]}]
    else:
        assert to_storage == []  # no Postgres, no Redis, no Kubernetes API, no internet


def test_the_policies_are_on_by_default_and_can_be_left_to_the_installer(default: Rendered) -> None:
    names = {p["metadata"]["name"] for p in default.of_kind("NetworkPolicy")}
    assert names == {"po-pretrain-orchestrator-api", "po-pretrain-orchestrator-no-ingress", "po-pretrain-orchestrator-trainers"}
    assert render({"networkPolicy": {"enabled": False}}).of_kind("NetworkPolicy") == []
