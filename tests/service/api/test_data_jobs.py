"""Data jobs through the API: stored without a plan, their progress and result reported by the
job's own token, the result only from the job's own directory, refused where only pretraining
makes sense (plan, rollback)."""

from __future__ import annotations

from typing import Any

import pytest

from service import checkpoints
from tests.conftest import auth
from tests.service.api.test_tokenizer_jobs import job_token

SIDECAR = {
    "format": "pretrain-data/1",
    "tokenizer": "byte",
    "vocab_size": 258,
    "eod_id": 256,
    "documents": 3,
    "tokens": 42,
    "dtype": "uint16",
    "inputs": ["embedded:en"],
    "seconds": 0.5,
}


def data_spec(**changes: Any) -> dict[str, Any]:
    return {"name": "en-data", "kind": "data", "inputs": ["embedded:en"], "output": "en"} | changes


def result(settings, job: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The report of attempt 0 of `job`: the pair it wrote into its own directory."""
    path = f"{checkpoints.job_directory(job['id'], job['name'], settings)}/data/en"
    return {"attempt": 0, "path": path, "report": SIDECAR} | changes


@pytest.fixture
def job(app_client, tokens) -> dict[str, Any]:
    response = app_client.post("/v1/jobs", json=data_spec(), headers=auth(tokens["alice"]))
    assert response.status_code == 201, response.text
    return response.json()


def test_a_data_job_is_stored_without_a_plan_and_without_a_result(job):
    assert job["kind"] == "data"
    assert job["plan"] is None and job["derived"] == {} and job["result"] is None
    assert job["spec"]["resources"] == {"cpu": 8, "memory_gib": 16.0}
    assert (job["spec"]["tokenizer"], job["spec"]["text_field"]) == ("byte", "text")
    assert [(a["number"], a["state"]) for a in job["attempts"]] == [(0, "pending")]


def test_an_invalid_data_spec_is_refused_with_field_paths(app_client, tokens):
    raw = data_spec(inputs=["/etc/passwd"], workers=0)
    response = app_client.post("/v1/jobs", json=raw, headers=auth(tokens["alice"]))
    assert response.status_code == 422
    locs = [problem["loc"] for problem in response.json()["detail"]]
    assert ["body", "workers"] in locs


def test_the_jobs_own_token_reports_progress_and_its_result(app_client, settings, tokens, job):
    token = auth(job_token(settings, job["id"]))
    record = {
        "job": str(job["id"]), "attempt": 0, "step": 1000, "stage": "data", "phase": "prepare",
        "tokens": 42, "metrics": {"prep/tokens": 42, "prep/tokens_per_s": 84.0},
    }  # fmt: skip
    response = app_client.post(f"/v1/jobs/{job['id']}/metrics", json=[record], headers=token)
    assert response.status_code == 202, response.text
    points = app_client.get(
        f"/v1/jobs/{job['id']}/metrics", params={"name": "prep/tokens"}, headers=auth(tokens["viewer"])
    ).json()
    assert [(p["step"], p["value"]) for p in points] == [(1000, 42)]

    response = app_client.post(f"/v1/jobs/{job['id']}/result", json=result(settings, job), headers=token)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == result(settings, job)


@pytest.mark.parametrize("where", ["/etc/passwd", "other", "own"])
def test_a_result_outside_the_jobs_own_directory_is_refused(app_client, settings, job, where):
    own = checkpoints.job_directory(job["id"], job["name"], settings)
    path = {"own": own, "other": f"{settings.checkpoint_root}/other-9/data/en"}.get(where, where)
    response = app_client.post(
        f"/v1/jobs/{job['id']}/result",
        json=result(settings, job, path=path),
        headers=auth(job_token(settings, job["id"])),
    )
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "path"] and own in problem["msg"]


def test_rollback_and_planning_refuse_a_data_job(app_client, tokens, job):
    response = app_client.post(
        f"/v1/jobs/{job['id']}/rollback", json={"reason": "spike"}, headers=auth(tokens["oncall"])
    )
    assert response.status_code == 409 and "data job" in response.json()["detail"]
    response = app_client.post("/v1/plan", json=data_spec(), headers=auth(tokens["viewer"]))
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "kind"] and "no memory or compute plan" in problem["msg"]
