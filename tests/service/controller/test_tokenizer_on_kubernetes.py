"""A tokenizer job on Kubernetes: the controller runs it as a batch/v1 Job, over real HTTP.

The emulator plays the Job controller by setting the Job's status (a ready pod, then the
`Complete` or `Failed` condition); the workload's result arrives as the pod would send it,
through `jobs.record_result`. Real Postgres underneath.
"""

from __future__ import annotations

import pytest

from service import jobs
from service.controller.manifests import workload_name
from service.db.models import Job
from service.db.session import get_sessionmaker
from service.settings import Settings
from tests.service.controller.on_cluster import ALICE, cluster_settings, event_kinds, stored

STAMP = "2026-01-01T00:00:10Z"
REPORT = {"layout": {"vocab_size": 1010, "padded_vocab_size": 1024}}


@pytest.fixture
def settings(pg_url, tmp_path) -> Settings:
    return cluster_settings(pg_url, tmp_path, checkpoint_pvc="checkpoints", max_pod_failure_retries=1)


@pytest.fixture
def job(settings) -> Job:
    spec = {
        "name": "zh-tokenizer",
        "kind": "tokenizer",
        "mode": "train",
        "corpora": ["embedded:zh", "web/zh"],
        "options": {"vocab_size": 32000},
        "resources": {"cpu": 4, "memory_gib": 24},
    }
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return jobs.submit_job(session, raw=spec, principal=ALICE)


def report_result(settings, job: Job, attempt: int = 0) -> None:
    """What the pod's `python -m trainer.job_result` does, through the same function."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        jobs.record_result(
            session,
            job_id=job.id,
            attempt=attempt,
            path=f"/checkpoints/zh-tokenizer-{job.id}/tokenizer",
            report=REPORT,
            actor=f"job-{job.id}-a{attempt}",
        )


def condition(kind: str, reason: str, message: str = "") -> dict:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": STAMP,
        "lastProbeTime": STAMP,
    }


def test_a_tokenizer_job_becomes_a_batch_job_with_its_config_and_token(controller, job, cluster):
    _, k8s = cluster
    controller.reconcile(job.id)

    name = workload_name(job.name, job.id, 0)
    assert k8s.names("pytorchjobs") == set()
    batch = k8s.get("jobs", name)
    assert batch is not None and batch["apiVersion"] == "batch/v1"
    assert batch["spec"]["backoffLimit"] == 0
    pod = batch["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["resources"]["requests"] == {"cpu": "4", "memory": f"{24 * 1024}Mi"}
    assert container["resources"]["limits"] == container["resources"]["requests"]
    config = k8s.get("configmaps", f"{name}-config")
    assert "/data/web/zh" in config["data"]["tokenizer.json"]
    assert f"/checkpoints/zh-tokenizer-{job.id}/tokenizer" in config["data"]["tokenizer.json"]
    uid = batch["metadata"]["uid"]
    for plural, owned in (("configmaps", f"{name}-config"), ("secrets", f"{name}-token")):
        (owner,) = k8s.get(plural, owned)["metadata"]["ownerReferences"]
        assert (owner["apiVersion"], owner["kind"], owner["uid"]) == ("batch/v1", "Job", uid)


def test_the_job_runs_succeeds_and_keeps_the_result_the_pod_reported(
    controller, job, cluster, settings
):
    _, k8s = cluster
    controller.reconcile(job.id)
    name = workload_name(job.name, job.id, 0)
    k8s.set_status("jobs", name, {"active": 1, "ready": 1, "startTime": STAMP})
    controller.reconcile(job.id)
    assert stored(settings, job.id).state == "running"

    report_result(settings, job)
    k8s.set_status(
        "jobs",
        name,
        {"succeeded": 1, "conditions": [condition("Complete", "CompletionsReached")]},
    )
    assert controller.reconcile(job.id) is None

    done = stored(settings, job.id)
    assert done.state == "succeeded"
    assert [a.state for a in done.attempts] == ["succeeded"]
    assert done.result["path"] == f"/checkpoints/zh-tokenizer-{job.id}/tokenizer"
    assert done.result["report"] == REPORT
    kinds = event_kinds(settings, job.id)
    order = [
        kinds.index(k)
        for k in ("workload.created", "attempt.running", "result.reported", "job.succeeded")
    ]
    assert order == sorted(order)


def test_a_job_that_completes_without_reporting_its_result_fails(controller, job, cluster, settings):
    _, k8s = cluster
    controller.reconcile(job.id)
    name = workload_name(job.name, job.id, 0)
    k8s.set_status("jobs", name, {"conditions": [condition("Complete", "CompletionsReached")]})

    controller.reconcile(job.id)

    done = stored(settings, job.id)
    assert done.state == "failed"
    assert "without reporting its result" in done.state_reason


def test_a_failed_job_fails_the_tokenizer_job_with_the_pods_reason(
    controller, job, cluster, settings
):
    _, k8s = cluster
    controller.reconcile(job.id)
    name = workload_name(job.name, job.id, 0)
    k8s.add_pod(k8s.get("jobs", name), exit_code=137, terminated_reason="OOMKilled")
    k8s.set_status(
        "jobs",
        name,
        {
            "failed": 1,
            "conditions": [
                condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            ],
        },
    )

    controller.reconcile(job.id)

    done = stored(settings, job.id)
    assert done.state == "failed"
    assert "out of memory" in done.state_reason and "OOMKilled" in done.state_reason
    assert [a.state for a in done.attempts] == ["failed"]  # an OOM is not retried


def test_an_evicted_pod_opens_a_new_attempt_with_a_new_batch_job(
    controller, job, cluster, settings
):
    _, k8s = cluster
    controller.reconcile(job.id)
    first = workload_name(job.name, job.id, 0)
    k8s.add_pod(k8s.get("jobs", first), pod_reason="Evicted", pod_message="The node was low on memory.")
    k8s.set_status(
        "jobs", first, {"failed": 1, "conditions": [condition("Failed", "BackoffLimitExceeded")]}
    )

    controller.reconcile(job.id)  # records the failure, opens attempt 1
    controller.reconcile(job.id)  # deletes attempt 0's Job, creates attempt 1's

    after = stored(settings, job.id)
    # An eviction is a preemption: the new attempt supersedes the evicted one, spending no budget.
    assert [(a.number, a.state, a.reason) for a in after.attempts] == [(0, "superseded", "launch"), (1, "pending", "preempted")]
    assert k8s.names("jobs") == {workload_name(job.name, job.id, 1)}


def test_cancel_deletes_the_batch_job_its_config_and_token(controller, job, cluster, settings):
    _, k8s = cluster
    controller.reconcile(job.id)
    name = workload_name(job.name, job.id, 0)
    k8s.set_status("jobs", name, {"active": 1, "ready": 1})
    controller.reconcile(job.id)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        jobs.cancel_job(session, job_id=job.id, principal=ALICE, reason="wrong corpora")

    controller.reconcile(job.id)  # deletes the workload
    controller.reconcile(job.id)  # nothing runs any more: cancelled

    assert k8s.names("jobs") == set()
    assert f"{name}-config" not in k8s.names("configmaps")
    assert f"{name}-token" not in k8s.names("secrets")
    deletes = [
        call
        for call in k8s.emulator.calls
        if call.plural == "jobs" and (call.action or "").lower() == "delete"
    ]
    assert deletes and all(c.params.get("propagationPolicy") == "Background" for c in deletes)
    assert stored(settings, job.id).state == "cancelled"
