"""The e2e kubelet stand-in (tests/e2e/kubelet.py) plays a TrainJob as Kubeflow Trainer and a node would, and leaves a
workload that Kueue holds suspended alone until it is admitted.

The TrainJob is the controller's own rendering; only its command is swapped for a few lines of
Python that check what the pod was given (the config file, the token, torchrun's topology), so
that the run takes a moment instead of a training run's minutes."""

from __future__ import annotations

import dataclasses
import time

import pytest

from service.controller.backends.kubernetes.status import trainjob_phase
from service.controller.manifests import Workload, render_trainjob_manifests
from service.controller.reconcile import Phase
from service.settings import Settings
from tests.e2e.kubelet import TrainerKubelet
from tests.service.controller.k8s_emulator import EmulatorHandle

CHECK = (
    "import json, os, sys; json.load(open(sys.argv[1])); "
    "assert os.environ['PRETRAIN_INGEST_TOKEN'] == 's3cret'; "
    "assert os.environ['PET_MASTER_ADDR'] and os.environ['PET_NPROC_PER_NODE'] == '2'"
)


@pytest.fixture
def k8s(cluster: tuple[str, EmulatorHandle]) -> EmulatorHandle:
    return cluster[1]


def store_trainjob(cluster: EmulatorHandle, **fields) -> str:
    workload = Workload(
        job_id=3,
        job_name="tiny",
        attempt=0,
        trainer_config={"job": {"id": "3", "attempt": 0}},
        ingest_token="s3cret",
        nodes=1,
        gpus_per_node=2,
        gpu_type="cpu",
    )
    workload = dataclasses.replace(workload, **fields)
    manifests = render_trainjob_manifests(workload, Settings(namespace="training"))
    trainjob = manifests["trainjob"]
    config_arg = trainjob["spec"]["trainer"]["command"][-1]
    trainjob["spec"]["trainer"]["command"] = ["python", "-c", CHECK, config_arg]
    for key in ("configmap", "secret", "trainjob"):
        plural = {"configmap": "configmaps", "secret": "secrets", "trainjob": "trainjobs"}[key]
        cluster.store(plural, manifests[key])
    return workload.name


def finished(cluster: EmulatorHandle, name: str, timeout: float = 20.0) -> Phase:
    """The TrainJob's phase once it has ended (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        found, _ = trainjob_phase(cluster.get("trainjobs", name).get("status") or {})
        if found in (Phase.SUCCEEDED, Phase.FAILED) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_trainjob_runs_with_what_its_overrides_and_secret_give_it(k8s, tmp_path):
    cluster = k8s
    name = store_trainjob(cluster)
    kubelet = TrainerKubelet(cluster, tmp_path, claims={}, poll_s=0.05)
    kubelet.start()
    try:
        assert finished(cluster, name) == Phase.SUCCEEDED, kubelet.tails()
    finally:
        kubelet.stop()
    assert kubelet.launched() == [name] and not kubelet.errors


def test_a_suspended_trainjob_waits_for_admission(k8s, tmp_path):
    cluster = k8s
    name = store_trainjob(cluster, queue="team-a")
    kubelet = TrainerKubelet(cluster, tmp_path, claims={}, poll_s=0.05)
    kubelet.start()
    try:
        time.sleep(0.5)
        assert kubelet.launched() == []
        cluster.admit(name)
        assert finished(cluster, name) == Phase.SUCCEEDED, kubelet.tails()
    finally:
        kubelet.stop()
    assert kubelet.launched() == [name] and not kubelet.errors
