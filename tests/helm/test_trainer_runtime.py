"""With `jobs.workload: kubeflow-trainer` the controller runs attempts as TrainJobs on a
ClusterTrainingRuntime that the chart installs (or that exists), and that runtime gives the pods
what `manifests/pod.py` gives a PyTorchJob's: the two paths cannot drift apart."""

from __future__ import annotations

import pytest

from service.controller.manifests import (
    TERMINATION_LOG,
    TRAINJOB_CONTAINER_NAME,
    Workload,
    render_trainjob_manifests,
)
from service.controller.manifests.pod import (
    container_security_context,
    pod_security_context,
    serializer,
)
from service.settings import Settings
from tests.helm.chart import Rendered, render, scenario_values
from tests.helm.test_workloads import container_environment


def runtime_pod(rendered: Rendered) -> dict:
    runtime = rendered.one("ClusterTrainingRuntime")
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    assert node["template"]["spec"]["backoffLimit"] == 0
    return node["template"]["spec"]["template"]["spec"]


def controller_settings(rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"PRETRAIN_{name.upper()}", raising=False)
    for name, value in container_environment(rendered, "controller").items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_the_runtime_gives_trainer_pods_what_a_pytorchjob_gives_them(
    renders: dict[str, Rendered],
) -> None:
    pod = runtime_pod(renders["trainer"])
    (container,) = pod["containers"]
    assert container["name"] == TRAINJOB_CONTAINER_NAME
    assert pod["securityContext"] == serializer().sanitize_for_serialization(pod_security_context())
    assert container["securityContext"] == serializer().sanitize_for_serialization(
        container_security_context()
    )
    assert container["terminationMessagePath"] == TERMINATION_LOG
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == 600
    assert pod["priorityClassName"] == "training-high"


def test_the_controllers_trainjobs_name_the_runtime_the_chart_installs(
    renders: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = renders["trainer"]
    settings = controller_settings(rendered, monkeypatch)
    assert settings.kubernetes_workload == "kubeflow-trainer"
    workload = Workload(
        job_id=1,
        job_name="tiny",
        attempt=0,
        trainer_config={"job": {"id": "1", "attempt": 0}},
        ingest_token="t",
        nodes=1,
        gpus_per_node=1,
        gpu_type="cpu",
    )
    job = render_trainjob_manifests(workload, settings)["trainjob"]
    assert job["spec"]["runtimeRef"]["name"] == rendered.one("ClusterTrainingRuntime")["metadata"]["name"]
    assert job["spec"]["suspend"] is True  # jobs.schedulingQueue: Kueue admits it


def test_by_default_attempts_are_pytorchjobs_and_no_runtime_is_installed(
    default: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default.of_kind("ClusterTrainingRuntime") == []
    assert controller_settings(default, monkeypatch).kubernetes_workload == "kubeflow-pytorchjob"


def test_an_existing_runtime_is_named_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    values = scenario_values("trainer")
    values["jobs"]["trainerRuntime"].update(create=False, name="team-torch")
    rendered = render(values)
    assert rendered.of_kind("ClusterTrainingRuntime") == []
    assert controller_settings(rendered, monkeypatch).trainer_runtime == "team-torch"
