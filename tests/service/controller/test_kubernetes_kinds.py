"""The backend's kinds table agrees with the builders it names: a new row that does not fails here."""

from __future__ import annotations

import pytest

from service.controller.backends.kubernetes.kinds import (
    PRETRAIN_WORKLOADS,
    WORKLOAD_KINDS,
    WorkloadKind,
    kind_of,
    workload_kinds,
)
from service.controller.manifests import (
    EVALUATION_WORKLOAD_KIND,
    DataWorkload,
    EvaluationWorkload,
    TokenizerWorkload,
    Workload,
)
from service.settings import Settings
from service.spec import JOB_KINDS

SETTINGS = Settings(namespace="training")
WORKLOADS = {
    "pretrain": Workload(
        job_id=7,
        job_name="tiny",
        attempt=1,
        trainer_config={"job": {"id": "7", "attempt": 1}},
        ingest_token="secret",
        nodes=2,
        gpus_per_node=1,
        gpu_type="cpu",
    ),
    "tokenizer": TokenizerWorkload(
        job_id=8,
        job_name="zh-tokenizer",
        attempt=0,
        tokenizer_config={"out": "/checkpoints/tokenizers/zh"},
        ingest_token="secret",
        ingest_url="http://pretrain-api:8000",
        cpu=2,
        memory_gib=4.0,
    ),
    "data": DataWorkload(
        job_id=9,
        job_name="web-data",
        attempt=0,
        data_config={"output": "/checkpoints/web-data-9/data/data"},
        ingest_token="secret",
        ingest_url="http://pretrain-api:8000",
        cpu=2,
        memory_gib=4.0,
    ),
    EVALUATION_WORKLOAD_KIND: EvaluationWorkload(
        job_id=7,
        job_name="tiny",
        step=40,
        trainer_config={"job": {"id": "7", "attempt": 1}},
        checkpoint="/checkpoints/tiny-7/step-00000040",
        benchmarks=[{"task": "en", "path": "/data/en.jsonl", "num_fewshot": 0, "limit": None}],
        output_dir="/checkpoints/tiny-7/evaluations/step-40",
        ingest_token="secret",
        ingest_url="http://pretrain-api:8000",
        cpu=2,
        memory_gib=4.0,
    ),
}


def test_every_job_kind_and_evaluations_have_a_row() -> None:
    assert set(WORKLOAD_KINDS) == {*JOB_KINDS, EVALUATION_WORKLOAD_KIND} == set(WORKLOADS)


# Every row a backend may walk: the default table's, and the other ways to run a pretrain job.
ROWS = {
    row.job_kind if row.kind == "Job" else row.kind: row
    for row in [*WORKLOAD_KINDS.values(), *PRETRAIN_WORKLOADS.values()]
}


def test_settings_choose_what_a_pretrain_attempt_runs_as_and_nothing_else() -> None:
    for choice, row in PRETRAIN_WORKLOADS.items():
        kinds = workload_kinds(Settings(kubernetes_workload=choice))
        assert kinds["pretrain"] is row
        assert kind_of(WORKLOADS["pretrain"], kinds) is row
        assert {k: v for k, v in kinds.items() if k != "pretrain"} == {
            k: v for k, v in WORKLOAD_KINDS.items() if k != "pretrain"
        }
    assert workload_kinds(Settings()) == WORKLOAD_KINDS


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_a_row_renders_its_own_kind_and_what_it_owns_under_the_names_it_deletes(kind: str) -> None:
    row: WorkloadKind = ROWS[kind]
    workload = WORKLOADS[row.job_kind]
    assert isinstance(workload, row.workload_type)

    rendered = row.render(workload, SETTINGS)
    body = rendered[row.key]
    assert (body["apiVersion"], body["kind"]) == (row.api_version, row.kind)
    assert body["metadata"]["name"] == workload.name
    assert set(rendered) == {row.key, *(owned.key for owned in row.owns)}
    for owned in row.owns:
        assert rendered[owned.key]["kind"] == owned.kind
        assert rendered[owned.key]["metadata"]["name"] == owned.name_for(workload.name)
        assert "ownerReferences" not in rendered[owned.key]["metadata"]


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_rendered_with_an_owner_what_a_row_owns_names_the_reference_the_backend_adopts_with(
    kind: str,
) -> None:
    row = ROWS[kind]
    workload = WORKLOADS[row.job_kind]
    rendered = row.render(workload, SETTINGS, owner_uid="uid-1")
    for owned in row.owns:
        references = rendered[owned.key]["metadata"]["ownerReferences"]
        assert references == [row.owner_reference(workload.name, "uid-1")]


def test_a_workload_no_row_runs_is_refused() -> None:
    with pytest.raises(TypeError, match="no workload kind runs a str"):
        kind_of("not a workload")  # type: ignore[arg-type]
