"""The whole controller against the Kubernetes emulator over real HTTP, on real Postgres.

Submit through the service, reconcile, and play the operator by moving the workload's
status: running, a retryable failure that resumes from the newest good checkpoint, success,
cancellation, API errors, a controller killed between any two steps, and two controllers on
one database. Every test runs once for each kind a pretrain attempt may run as: a Training
Operator `PyTorchJob` and a Kubeflow Trainer v2 `TrainJob`.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from service import ingest, jobs
from service.controller.loop import Controller
from service.db.models import Attempt, Checkpoint, Job
from service.db.session import get_sessionmaker
from service.settings import Settings
from tests.service.controller.on_cluster import (
    ALICE,
    cluster_settings,
    event_kinds,
    make_controller,
    name_of,
    stored,
)

PLURALS = {"kubeflow-pytorchjob": "pytorchjobs", "kubeflow-trainer": "trainjobs"}


@pytest.fixture(params=sorted(PLURALS))
def settings(request, pg_url, tmp_path) -> Settings:
    return cluster_settings(pg_url, tmp_path, kubernetes_workload=request.param)


@pytest.fixture
def plural(settings) -> str:
    """Where the attempts' workloads are stored: `pytorchjobs` or `trainjobs`."""
    return PLURALS[settings.kubernetes_workload]


@pytest.fixture
def job(settings, tiny_spec) -> Job:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return jobs.submit_job(session, raw=tiny_spec, principal=ALICE)


def test_submit_creates_a_workload_of_the_right_shape(controller, job, cluster, plural):
    _, k8s = cluster
    controller.reconcile(job.id)

    workload = k8s.get(plural, name_of(job, 0))
    assert workload is not None
    spec = workload["spec"]
    if plural == "pytorchjobs":
        assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
        assert "Worker" not in spec["pytorchReplicaSpecs"]  # one node
        assert spec["nprocPerNode"] == "2"
        container = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        assert container["name"] == "pytorch"
    else:
        assert (spec["trainer"]["numNodes"], spec["trainer"]["numProcPerNode"]) == (1, 2)
        assert spec["runtimeRef"]["name"] == "torch-distributed"
        assert spec["podSpecOverrides"][0]["containers"][0]["name"] == "node"
    assert workload["metadata"]["labels"]["pretrain.io/job-id"] == str(job.id)
    assert {f"{name_of(job, 0)}-config"} <= k8s.names("configmaps")
    assert {f"{name_of(job, 0)}-token"} <= k8s.names("secrets")


def test_the_job_follows_the_operator_from_running_to_succeeded(controller, job, cluster, settings):
    _, k8s = cluster
    controller.reconcile(job.id)
    k8s.transition(name_of(job, 0), "Created")
    k8s.transition(name_of(job, 0), "Running")
    controller.reconcile(job.id)
    assert stored(settings, job.id).state == "running"

    k8s.transition(name_of(job, 0), "Succeeded")
    assert controller.reconcile(job.id) is None
    done = stored(settings, job.id)
    assert done.state == "succeeded" and [a.state for a in done.attempts] == ["succeeded"]
    kinds = event_kinds(settings, job.id)
    order = [kinds.index(k) for k in ("job.submitted", "workload.created", "attempt.running", "attempt.succeeded", "job.succeeded")]
    assert order == sorted(order)


def test_an_evicted_workload_is_preempted_and_its_successor_spends_no_retry_budget(controller, job, cluster, settings):
    _, k8s = cluster
    controller.reconcile(job.id)
    k8s.transition(name_of(job, 0), "Running")
    controller.reconcile(job.id)

    k8s.transition(name_of(job, 0), "Failed", reason="Evicted", message="The node was low on resource: memory.")
    controller.reconcile(job.id)

    after = stored(settings, job.id)
    assert [(a.number, a.state, a.reason) for a in after.attempts] == [(0, "superseded", "launch"), (1, "pending", "preempted")]
    assert "node disruption" in after.attempts[0].state_reason


def test_a_retryable_failure_opens_an_attempt_resuming_from_the_newest_good_checkpoint(controller, job, cluster, settings, plural):
    _, k8s = cluster
    controller.reconcile(job.id)
    k8s.transition(name_of(job, 0), "Running")
    controller.reconcile(job.id)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        for step in (40, 80):
            ingest.record_checkpoint(
                session, job_id=job.id, attempt=0, step=step, tokens=step * 2048,
                path=f"/checkpoints/tiny-cpu-{job.id}/step-{step:08d}", manifest_sha256=f"{step:064x}", actor="trainer",
            )  # fmt: skip

    # A fabric hiccup (an eviction is a preemption instead: see the next test).
    k8s.transition(name_of(job, 0), "Failed", reason="PyTorchJobFailed", message="NCCL error: remote process exited")
    controller.reconcile(job.id)  # records the failure, opens attempt 1
    controller.reconcile(job.id)  # deletes attempt 0's workload, creates attempt 1's

    after = stored(settings, job.id)
    assert [(a.number, a.state, a.reason) for a in after.attempts] == [(0, "failed", "launch"), (1, "pending", "pod_failure")]
    with get_sessionmaker(settings.resolved_database_url)() as session:
        attempt = session.scalars(select(Attempt).where(Attempt.job_id == job.id, Attempt.number == 1)).one()
        assert session.get(Checkpoint, attempt.resume_from_checkpoint_id).step == 80
    assert k8s.names(plural) == {name_of(job, 1)}
    config = k8s.get("configmaps", f"{name_of(job, 1)}-config")["data"]["trainer.json"]
    assert f"step-{80:08d}" in config


def test_a_permanent_failure_fails_the_job(controller, job, cluster, settings):
    _, k8s = cluster
    controller.reconcile(job.id)
    k8s.transition(name_of(job, 0), "Failed", reason="OOMKilled", message="container pytorch was OOMKilled")
    controller.reconcile(job.id)
    failed = stored(settings, job.id)
    assert failed.state == "failed" and "OOM" in failed.state_reason


def test_cancel_deletes_the_workload(controller, job, cluster, settings, plural):
    _, k8s = cluster
    controller.reconcile(job.id)
    k8s.transition(name_of(job, 0), "Running")
    controller.reconcile(job.id)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        jobs.cancel_job(session, job_id=job.id, principal=ALICE, reason="wrong data")

    controller.reconcile(job.id)
    controller.reconcile(job.id)

    assert k8s.names(plural) == set()
    assert stored(settings, job.id).state == "cancelled"


def test_api_errors_are_retried_without_duplicates(controller, job, cluster, plural):
    _, k8s = cluster
    k8s.fail_next("create", plural, times=2, status=500)
    delays = [controller.reconcile(job.id) for _ in range(2)]
    assert all(d is not None and d >= 2 for d in delays)  # backing off
    controller.reconcile(job.id)
    k8s.fail_next("create", "configmaps", times=1, status=409)
    controller.reconcile(job.id)
    assert k8s.names(plural) == {name_of(job, 0)}
    assert len(k8s.objects("configmaps")) == 1 and len(k8s.objects("secrets")) == 1


def test_a_controller_killed_between_any_two_steps_converges_to_one_workload_per_attempt(settings, cluster, job, plural):
    """Each reconcile is a fresh controller (a restart); the world converges to the same state."""
    _, k8s = cluster
    script = [
        lambda: None,
        lambda: k8s.transition(name_of(job, 0), "Running"),
        lambda: k8s.transition(name_of(job, 0), "Failed", reason="Evicted"),
        lambda: None,
        lambda: k8s.transition(name_of(job, 1), "Running"),
        lambda: k8s.transition(name_of(job, 1), "Succeeded"),
    ]
    for step in script:
        step()
        for _ in range(2):  # a restarted controller reconciles again: harmless
            make_controller(settings, cluster).reconcile(job.id)
    final = stored(settings, job.id)
    assert final.state == "succeeded"
    # Evicted: a preemption, so its successor supersedes it rather than it failing.
    assert [(a.number, a.state) for a in final.attempts] == [(0, "superseded"), (1, "succeeded")]
    assert k8s.names(plural) == {name_of(job, 1)}
    assert k8s.count("create", plural) == 2


def test_two_controllers_on_one_postgres_never_double_act(settings, cluster, tiny_spec, plural):
    _, k8s = cluster
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job_ids = [
            jobs.submit_job(session, raw={**tiny_spec, "name": f"race-{i}"}, principal=ALICE).id for i in range(6)
        ]
    controllers = [make_controller(settings, cluster) for _ in range(2)]
    barrier = threading.Barrier(2)

    def work(controller: Controller) -> None:
        barrier.wait()
        for _ in range(3):
            for job_id in job_ids:
                controller.reconcile(job_id)

    threads = [threading.Thread(target=work, args=(c,)) for c in controllers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(k8s.objects(plural)) == 6
    assert k8s.count("create", plural) == 6  # not one create attempted twice
    for job_id in job_ids:
        assert event_kinds(settings, job_id).count("workload.created") == 1
