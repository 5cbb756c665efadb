"""A checkpoint's benchmark evaluation on Kubernetes: a batch/v1 Job of its own, over real HTTP.

The training attempt runs as a PyTorchJob; each chosen checkpoint is scored by a separate Job
with its own pod spec and the spec's `evaluation.resources`. The emulator plays the Job
controller; a failed evaluation marks its rows failed and the training job goes on to succeed.
Real Postgres underneath.
"""

from __future__ import annotations

import kubernetes_validate
import pytest

from service import evaluations, ingest, jobs
from service.controller.manifests import workload_name
from service.db.models import Job
from service.db.session import get_sessionmaker
from service.settings import Settings
from tests.service.controller.on_cluster import (
    ALICE,
    Killed,
    cluster_settings,
    event_kinds,
    make_controller,
    stored,
)
from tests.service.controller.test_manifests import KUBERNETES_VERSION, as_pod
from tests.service.controller.test_tokenizer_on_kubernetes import condition

EVALUATION = {
    "benchmarks": [{"task": "continuation-en", "path": "benchmarks/en.jsonl", "limit": 32}],
    "checkpoints": {"every": 1, "final": True},
    "resources": {"cpu": 3, "memory_gib": 6},
}


@pytest.fixture
def settings(pg_url, tmp_path) -> Settings:
    return cluster_settings(pg_url, tmp_path, checkpoint_pvc="checkpoints", data_pvc="corpora")


@pytest.fixture
def job(settings, tiny_spec) -> Job:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        data = {"credentials_secret": "corpus-s3"}  # s3:// items: read with the data's credentials
        spec = {**tiny_spec, "evaluation": EVALUATION, "data": data}
        return jobs.submit_job(session, raw=spec, principal=ALICE)


def register_checkpoint(settings: Settings, job: Job, step: int) -> None:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        ingest.record_checkpoint(
            session, job_id=job.id, attempt=0, step=step, tokens=step * 2048,
            path=f"/checkpoints/tiny-cpu-{job.id}/step-{step:08d}", manifest_sha256=f"{step:064x}", actor="trainer",
        )  # fmt: skip


def rows(settings: Settings, job: Job) -> list[tuple[int, str, str | None]]:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        found = evaluations.list_evaluations(session, job_id=job.id)
        return [(row.step, row.state, row.error) for row in found]


def running_training(controller, job, k8s) -> None:
    controller.reconcile(job.id)
    k8s.transition(workload_name(job.name, job.id, 0), "Created")
    k8s.transition(workload_name(job.name, job.id, 0), "Running")
    controller.reconcile(job.id)


def test_a_checkpoint_is_scored_by_a_job_of_its_own_with_the_evaluation_resources(
    controller, job, cluster, settings
):
    _, k8s = cluster
    running_training(controller, job, k8s)
    register_checkpoint(settings, job, 40)

    controller.evaluator.run_once()

    name = workload_name(job.name, job.id, 40, prefix="e")
    evaluation = k8s.get("jobs", name)
    training = k8s.get("pytorchjobs", workload_name(job.name, job.id, 0))
    assert evaluation is not None and evaluation["apiVersion"] == "batch/v1"
    assert evaluation["metadata"]["labels"]["pretrain.io/evaluation-step"] == "40"
    kubernetes_validate.validate(evaluation, KUBERNETES_VERSION, strict=True)
    pod = evaluation["spec"]["template"]
    kubernetes_validate.validate(as_pod(pod, "training"), KUBERNETES_VERSION, strict=True)
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["requests"] == {"cpu": "3", "memory": f"{6 * 1024}Mi"}
    assert container["resources"]["limits"] == container["resources"]["requests"]
    assert "trainer.benchmarks" in container["command"][2]
    assert container["envFrom"] == [{"secretRef": {"name": "corpus-s3"}}]
    # Not a container of the training pods: they keep their own spec and resources.
    trainer = training["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert [c["name"] for c in trainer] == ["pytorch"]
    assert trainer[0]["resources"] != container["resources"]
    config = k8s.get("configmaps", f"{name}-config")["data"]
    assert '"path": "/data/benchmarks/en.jsonl"' in config["benchmarks.json"]
    assert f"/checkpoints/tiny-cpu-{job.id}/step-00000040" in container["command"]
    assert {f"{name}-token"} <= k8s.names("secrets")
    assert rows(settings, job) == [(40, "running", None)]


def test_a_failed_evaluation_fails_its_rows_and_never_the_training_job(
    controller, job, cluster, settings
):
    _, k8s = cluster
    running_training(controller, job, k8s)
    register_checkpoint(settings, job, 40)
    register_checkpoint(settings, job, 80)
    controller.evaluator.run_once()  # step 40 starts; 80 waits: one at a time
    assert [(step, state) for step, state, _ in rows(settings, job)] == [
        (40, "running"),
        (80, "pending"),
    ]

    name = workload_name(job.name, job.id, 40, prefix="e")
    k8s.add_pod(k8s.get("jobs", name), exit_code=137, terminated_reason="OOMKilled")
    k8s.set_status(
        "jobs", name, {"failed": 1, "conditions": [condition("Failed", "BackoffLimitExceeded")]}
    )
    controller.evaluator.run_once()  # 40 failed, its Job removed; 80 starts
    controller.reconcile(job.id)

    (failed, started) = rows(settings, job)
    assert failed[:2] == (40, "failed") and "OOMKilled" in failed[2]
    assert started[:2] == (80, "running")
    assert k8s.get("jobs", name) is None
    assert stored(settings, job.id).state == "running"

    # The scores of step 80 arrive as its pod would send them; then training ends.
    with get_sessionmaker(settings.resolved_database_url)() as session:
        score = {"task": "continuation-en", "acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.25,
                 "acc_norm_stderr": 0.1, "nll": 2.5, "samples": 32, "num_fewshot": 0}  # fmt: skip
        evaluations.record_results(
            session, job_id=job.id, step=80, results=[score], actor="evaluation"
        )
    k8s.transition(workload_name(job.name, job.id, 0), "Succeeded")
    controller.reconcile(job.id)

    assert stored(settings, job.id).state == "succeeded"
    assert [(step, state) for step, state, _ in rows(settings, job)] == [
        (40, "failed"),
        (80, "succeeded"),
    ]
    assert "evaluation.failed" in event_kinds(settings, job.id)


def test_controllers_killed_while_starting_an_evaluation_leave_one_job_whose_scores_land_and_a_vanished_one_fails(
    controller, job, cluster, settings
):
    _, k8s = cluster
    running_training(controller, job, k8s)
    register_checkpoint(settings, job, 40)
    # Controllers die one after another, each once its Nth API request took effect (N = 0, 1,
    # 2, ...: at every point of starting the evaluation), until one gets through a whole pass.
    kills = 0
    while True:
        dying = make_controller(settings, cluster, kill_after=kills)
        try:
            dying.evaluator.run_once()
        except Killed:
            kills += 1
            continue
        break
    name = workload_name(job.name, job.id, 40, prefix="e")
    assert kills >= 2 and k8s.get("jobs", name) is not None

    restarted = make_controller(settings, cluster)
    for _ in range(3):
        restarted.evaluator.run_once()

    evaluation_jobs = {n for n in k8s.names("jobs") if n.startswith(name)}
    assert evaluation_jobs == {name}  # adopted as it is, never created twice
    # Its pod reports with the token it was created with: the scores land, and once it exits
    # the Job goes.
    with get_sessionmaker(settings.resolved_database_url)() as session:
        score = {"task": "continuation-en", "acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.25,
                 "acc_norm_stderr": 0.1, "nll": 2.5, "samples": 32, "num_fewshot": 0}  # fmt: skip
        evaluations.record_results(
            session, job_id=job.id, step=40, results=[score], actor="evaluation"
        )
    k8s.set_status("jobs", name, {"succeeded": 1, "conditions": [condition("Complete", "Done")]})
    restarted.evaluator.run_once()
    assert rows(settings, job) == [(40, "succeeded", None)]
    assert k8s.get("jobs", name) is None

    # The next one's Job deleted by hand (or lost with its node): its rows fail, training runs on.
    register_checkpoint(settings, job, 80)
    restarted.evaluator.run_once()
    k8s.remove("jobs", workload_name(job.name, job.id, 80, prefix="e"))
    restarted.evaluator.run_once()
    step, state, error = rows(settings, job)[1]
    assert (step, state) == (80, "failed") and "gone" in error
    restarted.reconcile(job.id)
    assert stored(settings, job.id).state == "running"
