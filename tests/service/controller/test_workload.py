"""One builder: the review shows exactly the workload the controller launches from the stored job."""

from __future__ import annotations

import math

import pytest
import yaml

from service import jobs
from service.controller.manifests import (
    REVIEW_JOB_ID,
    REVIEW_TOKEN,
    TokenizerWorkload,
    render_for_review,
    render_manifests,
    render_tokenizer_manifests,
)
from service.controller.workload import build_workload
from service.db import repo
from service.db.models import Role
from service.db.session import get_sessionmaker
from service.spec import parse_spec_text
from service.tokens import Principal
from tests.service.controller.test_trainer_config import EXAMPLES, make_settings

ALICE = Principal(name="alice", role=Role.SUBMITTER)


def launched_manifests(settings, example: str, *, kubernetes) -> list[dict]:
    """What the controller builds for attempt 0 of the example, read back from its stored row."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job_id = jobs.submit_job(
            session, raw=parse_spec_text((EXAMPLES / example).read_text()), principal=ALICE
        ).id
    with get_sessionmaker(settings.resolved_database_url)() as session:
        stored = repo.get_job(session, job_id=job_id)
        session.expunge(stored)
    stored.id = REVIEW_JOB_ID  # the review's placeholder; the controller's differs only by it
    workload = build_workload(stored, stored.attempts[0], kubernetes, ingest_token=REVIEW_TOKEN)
    if isinstance(workload, TokenizerWorkload):
        rendered = render_tokenizer_manifests(workload, kubernetes)
    else:
        rendered = render_manifests(workload, kubernetes)
    return list(yaml.safe_load_all(yaml.safe_dump_all(rendered.values())))


@pytest.mark.parametrize("example", ["tiny-cpu.yaml", "qwen2-7b-pretrain.yaml", "tokenizer-zh.yaml"])
def test_the_review_is_the_workload_the_controller_builds_from_the_stored_job(settings, example):
    kubernetes = make_settings(backend="kubernetes")
    review = render_for_review((EXAMPLES / example).read_text(), settings=kubernetes)
    assert list(yaml.safe_load_all(review)) == launched_manifests(
        settings, example, kubernetes=kubernetes
    )


def test_a_cpu_jobs_pods_request_the_memory_its_review_shows(settings):
    kubernetes = make_settings(backend="kubernetes")
    spec = parse_spec_text((EXAMPLES / "tiny-cpu.yaml").read_text())
    resources = spec["resources"]
    memory = f"{math.ceil(resources['gpu_memory_gib'] * resources['gpus_per_node'])}Gi"
    review = list(yaml.safe_load_all(render_for_review(yaml.safe_dump(spec), settings=kubernetes)))
    launched = launched_manifests(settings, "tiny-cpu.yaml", kubernetes=kubernetes)
    for manifests in (review, launched):
        replicas = manifests[0]["spec"]["pytorchReplicaSpecs"]
        for replica in replicas.values():
            (container,) = replica["template"]["spec"]["containers"]
            assert container["resources"]["requests"]["memory"] == memory


def test_the_credentials_secret_a_spec_names_reaches_every_trainer_pod(settings):
    kubernetes = make_settings(backend="kubernetes")
    spec = parse_spec_text((EXAMPLES / "qwen2-7b-pretrain.yaml").read_text())
    spec["data"] = {"credentials_secret": "corpus-reader"}
    for source in spec["stages"][0]["data"]:
        source["path"] = f"s3://corpus/v3/{source['channel']}"
    review = list(yaml.safe_load_all(render_for_review(yaml.safe_dump(spec), settings=kubernetes)))
    for replica in review[0]["spec"]["pytorchReplicaSpecs"].values():
        (container,) = replica["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "corpus-reader"}}]


def _built(settings, spec: dict):
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job_id = jobs.submit_job(session, raw=spec, principal=ALICE).id
    with get_sessionmaker(settings.resolved_database_url)() as session:
        stored = repo.get_job(session, job_id=job_id)
        return build_workload(stored, stored.attempts[0], settings), stored.memory_plan


def test_the_workload_carries_the_specs_queue_priority_and_grace_period_to_the_trainer(settings, tiny_spec):
    tiny_spec["resources"].update(queue="team-a", priority="research-low", termination_grace_s=240)
    workload, _ = _built(settings, tiny_spec)
    assert (workload.queue, workload.priority, workload.termination_grace_s) == ("team-a", "research-low", 240)
    assert workload.trainer_config["checkpoint"]["termination_grace_s"] == 240.0


def test_without_a_grace_period_in_the_spec_the_workload_takes_the_plans(settings, tiny_spec):
    workload, plan = _built(settings, tiny_spec)
    assert (workload.queue, workload.priority) == (None, None)
    assert workload.termination_grace_s == plan.checkpoint.termination_grace_s
    assert workload.trainer_config["checkpoint"]["termination_grace_s"] == plan.checkpoint.termination_grace_s


def test_a_hang_injected_in_the_spec_reaches_the_first_attempt_only(settings, tiny_spec):
    from service.controller.trainer_config import render_trainer_config
    from service.controller.workload import unsaved_attempt

    tiny_spec["faults"] = {"hang_at_step": 5}
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = repo.get_job(session, job_id=jobs.submit_job(session, raw=tiny_spec, principal=ALICE).id)
        first, later = (
            render_trainer_config(job, unsaved_attempt(n), settings, resume_from=None, ingest_token=None)
            for n in (0, 1)
        )
    assert (first["faults"]["hang_at_step"], later["faults"]["hang_at_step"]) == (5, None)
