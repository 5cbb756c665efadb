"""A data job on Kubernetes: the controller runs it as a batch/v1 Job, like a tokenizer job.

The emulator plays the Job controller; the result arrives as the pod would send it, through
`jobs.record_result`. Real Postgres underneath.
"""

from __future__ import annotations

import json

import pytest

from service import jobs
from service.controller.manifests import workload_name
from service.db.models import Job
from service.db.session import get_sessionmaker
from service.settings import Settings
from tests.service.controller.on_cluster import ALICE, cluster_settings, event_kinds, stored
from tests.service.controller.test_tokenizer_on_kubernetes import STAMP, condition

SIDECAR = {"format": "pretrain-data/1", "tokenizer": "byte", "documents": 3, "tokens": 42}


@pytest.fixture
def settings(pg_url, tmp_path) -> Settings:
    return cluster_settings(pg_url, tmp_path, checkpoint_pvc="checkpoints", max_pod_failure_retries=1)


@pytest.fixture
def job(settings) -> Job:
    spec = {
        "name": "web-data",
        "kind": "data",
        "inputs": ["web/en.jsonl", "embedded:zh"],
        "output": "web",
        "resources": {"cpu": 4, "memory_gib": 8},
    }
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return jobs.submit_job(session, raw=spec, principal=ALICE)


def test_a_data_job_runs_as_a_batch_job_and_keeps_the_sidecar_the_pod_reported(
    controller, job, cluster, settings
):
    _, k8s = cluster
    controller.reconcile(job.id)
    name = workload_name(job.name, job.id, 0)
    batch = k8s.get("jobs", name)
    assert batch is not None and k8s.names("pytorchjobs") == set()
    (container,) = batch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "data" and "trainer.prepare" in container["command"][2]
    config = json.loads(k8s.get("configmaps", f"{name}-config")["data"]["data.json"])
    prefix = f"/checkpoints/web-data-{job.id}/data/web"
    assert config["inputs"] == ["/data/web/en.jsonl", "embedded:zh"]
    assert (config["output"], config["workers"]) == (prefix, 4)

    k8s.set_status("jobs", name, {"active": 1, "ready": 1, "startTime": STAMP})
    controller.reconcile(job.id)
    assert stored(settings, job.id).state == "running"
    with get_sessionmaker(settings.resolved_database_url)() as session:
        jobs.record_result(
            session, job_id=job.id, attempt=0, path=prefix, report=SIDECAR, actor="job-a0"
        )
    k8s.set_status(
        "jobs", name, {"succeeded": 1, "conditions": [condition("Complete", "CompletionsReached")]}
    )
    assert controller.reconcile(job.id) is None

    done = stored(settings, job.id)
    assert done.state == "succeeded"
    assert done.result == {"attempt": 0, "path": prefix, "report": SIDECAR}
    kinds = event_kinds(settings, job.id)
    order = [kinds.index(k) for k in ("workload.created", "result.reported", "job.succeeded")]
    assert order == sorted(order)


def test_a_data_job_that_completes_without_reporting_its_result_fails(
    controller, job, cluster, settings
):
    _, k8s = cluster
    controller.reconcile(job.id)
    name = workload_name(job.name, job.id, 0)
    k8s.set_status("jobs", name, {"conditions": [condition("Complete", "CompletionsReached")]})

    controller.reconcile(job.id)

    done = stored(settings, job.id)
    assert done.state == "failed" and "without reporting its result" in done.state_reason
