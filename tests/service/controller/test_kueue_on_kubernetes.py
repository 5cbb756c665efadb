"""A workload waiting for Kueue is queued, for Kueue's reason, with either kind of workload.

The emulator plays Kueue (its ADDITION 9): a workload created suspended in a queue gets a Kueue
`Workload` saying it does not fit, and stays suspended until the test admits it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from kubernetes import client

from service import jobs
from service.controller.backends.kubernetes import KubernetesBackend
from service.controller.backends.kubernetes.status import kueue_reason, trainjob_phase
from service.controller.manifests import Workload
from service.controller.reconcile import Phase
from service.db.session import get_sessionmaker
from service.settings import Settings
from tests.service.controller.k8s_emulator import KUEUE_MESSAGE, EmulatorHandle
from tests.service.controller.on_cluster import (
    ALICE,
    cluster_settings,
    event_kinds,
    make_controller,
    name_of,
    stored,
)
from tests.service.controller.test_kubernetes_backend import SETTINGS, workload

PLURALS = {"kubeflow-pytorchjob": "pytorchjobs", "kubeflow-trainer": "trainjobs"}


@pytest.fixture(params=sorted(PLURALS))
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def backend(kind: str, cluster: tuple[str, EmulatorHandle]) -> Iterator[KubernetesBackend]:
    settings = SETTINGS.model_copy(update={"kubernetes_workload": kind})
    with KubernetesBackend(settings, client.Configuration(host=cluster[0])) as backend:
        yield backend


def queued(**fields) -> Workload:
    return dataclasses.replace(workload(nodes=1), queue="team-a", **fields)


def test_a_workload_kueue_holds_is_queued_with_kueues_reason(backend, cluster):
    _, k8s = cluster
    backend.create(queued())
    (status,) = backend.observe(7).values()
    assert (status.phase, status.reason) == (Phase.QUEUED, KUEUE_MESSAGE)


def test_once_admitted_it_runs(backend, cluster):
    _, k8s = cluster
    backend.create(queued())
    k8s.admit("tiny-7-a0")
    assert backend.observe(7)[0].phase == Phase.PENDING
    k8s.transition("tiny-7-a0", "Running")
    assert backend.observe(7)[0].phase == Phase.RUNNING


def test_without_kueues_word_the_suspended_condition_says_why(backend, cluster, kind):
    _, k8s = cluster
    backend.create(queued())
    for found in k8s.objects("workloads"):
        k8s.remove("workloads", found["metadata"]["name"])
    plural = PLURALS[kind]
    condition = {
        "type": "Suspended",
        "status": "True",
        "reason": "Suspended",
        "message": "TrainJob is suspended",
        "lastTransitionTime": "2026-01-01T00:00:01Z",
    }
    k8s.set_status(plural, "tiny-7-a0", {"conditions": [condition]})
    (status,) = backend.observe(7).values()
    assert (status.phase, status.reason) == (Phase.QUEUED, "Suspended: TrainJob is suspended")


def test_a_workload_without_a_queue_is_not_held(backend, cluster):
    _, k8s = cluster
    backend.create(workload(nodes=1))
    assert backend.observe(7)[0].phase == Phase.PENDING
    assert k8s.objects("workloads") == []


@pytest.mark.parametrize("queue_from", ["spec", "install"])
def test_a_job_in_a_kueue_queue_shows_queued_with_kueues_reason_then_running(
    pg_url, tmp_path, cluster, kind, tiny_spec, queue_from
):
    """The controller through a queued attempt, either kind: the job is `queued` with what
    Kueue says while it holds the workload suspended, then `running` once Kueue admits it."""
    install_queue = "team-a" if queue_from == "install" else None
    settings: Settings = cluster_settings(
        pg_url, tmp_path, kubernetes_workload=kind, scheduling_queue=install_queue
    )
    if queue_from == "spec":
        tiny_spec["resources"]["queue"] = "team-b"
    _, k8s = cluster
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
    controller = make_controller(settings, cluster)
    controller.reconcile(job.id)
    assert controller.reconcile(job.id) is not None  # held: look again later
    held = stored(settings, job.id)
    assert held.state == "queued" and held.state_reason == KUEUE_MESSAGE
    (created,) = k8s.objects(PLURALS[kind])
    assert created["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == (install_queue or "team-b")
    assert len(k8s.objects("workloads")) == 1

    k8s.admit(name_of(job, 0))
    k8s.transition(name_of(job, 0), "Running")
    controller.reconcile(job.id)
    assert stored(settings, job.id).state == "running"
    kinds = event_kinds(settings, job.id)
    assert kinds.count("attempt.queued") == 1
    assert kinds.index("attempt.queued") < kinds.index("attempt.running")


# --- what Kueue and Trainer say, without a server --------------------------------------------


@pytest.mark.parametrize(
    ("status", "phase", "condition"),
    [
        ({}, Phase.PENDING, None),
        ({"conditions": [{"type": "Created", "status": "True"}]}, Phase.PENDING, "Created"),
        ({"conditions": [{"type": "Suspended", "status": "True"}]}, Phase.PENDING, "Suspended"),
        ({"conditions": [{"type": "Suspended", "status": "False"}]}, Phase.PENDING, None),
        ({"jobsStatus": [{"name": "node", "active": 2, "ready": 0}]}, Phase.PENDING, None),
        ({"jobsStatus": [{"name": "node", "active": 2, "ready": 2}]}, Phase.RUNNING, None),
        ({"jobsStatus": [{"name": "node", "active": 2}]}, Phase.RUNNING, None),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, Phase.SUCCEEDED, "Complete"),
        (
            {
                "conditions": [
                    {"type": "Complete", "status": "True"},
                    {"type": "Failed", "status": "True"},
                ]
            },
            Phase.FAILED,
            "Failed",
        ),
    ],
)
def test_trainjob_phases(status, phase, condition):
    found, said = trainjob_phase(status)
    assert found == phase
    assert (said or {}).get("type") == condition


def kueue_workload(uid: str, *conditions: tuple[str, str, str]) -> dict:
    return {
        "metadata": {"ownerReferences": [{"uid": uid}]},
        "status": {
            "conditions": [{"type": t, "status": s, "message": m} for t, s, m in conditions]
        },
    }


def test_kueue_reason_reads_quota_then_admission_of_the_workloads_own_record():
    assert kueue_reason([kueue_workload("a", ("QuotaReserved", "False", "no quota"))], "a") == "no quota"
    admitted_not = kueue_workload(
        "a", ("QuotaReserved", "True", "reserved"), ("Admitted", "False", "waiting for checks")
    )
    assert kueue_reason([admitted_not], "a") == "waiting for checks"
    assert kueue_reason([kueue_workload("b", ("QuotaReserved", "False", "no quota"))], "a") is None
    assert kueue_reason([kueue_workload("a")], "a") == "waiting for Kueue to reserve quota"
    assert kueue_reason([], "a") is None
