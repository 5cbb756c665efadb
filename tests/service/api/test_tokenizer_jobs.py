"""Tokenizer jobs through the API: submitted without a plan, their result reported by the job's
own token, and refused where only pretraining makes sense (plan, rollback)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from service import checkpoints
from service.db.models import Event, Role
from service.db.session import get_sessionmaker
from service.tokens import mint_token
from tests.conftest import auth

REPORT = {"layout": {"vocab_size": 1010, "padded_vocab_size": 1024}}


def result(settings, job: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The report of attempt 0 of `job`: the tokenizer it wrote into its own directory."""
    path = f"{checkpoints.job_directory(job['id'], job['name'], settings)}/tokenizer"
    return {"attempt": 0, "path": path, "report": REPORT} | changes


def tokenizer_spec(**changes: Any) -> dict[str, Any]:
    return {
        "name": "zh-tokenizer",
        "kind": "tokenizer",
        "mode": "train",
        "corpora": ["embedded:zh"],
        "options": {"vocab_size": 4000},
    } | changes


@pytest.fixture
def job(app_client, tokens) -> dict[str, Any]:
    response = app_client.post("/v1/jobs", json=tokenizer_spec(), headers=auth(tokens["alice"]))
    assert response.status_code == 201, response.text
    return response.json()


def job_token(settings, job_id: int) -> str:
    """The per-attempt token the controller mints for a workload."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return mint_token(
            session, name=f"job-{job_id}-a0", role=Role.VIEWER, created_by="controller", job_id=job_id
        )[1]


def test_a_tokenizer_job_is_stored_without_a_plan_and_without_a_result(job):
    assert job["kind"] == "tokenizer"
    assert job["plan"] is None and job["derived"] == {} and job["result"] is None
    assert job["spec"]["resources"] == {"cpu": 8, "memory_gib": 64.0}
    assert [(a["number"], a["state"]) for a in job["attempts"]] == [(0, "pending")]


def test_a_pretrain_job_has_no_result_either(app_client, tokens, tiny_spec):
    response = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"]))
    assert response.status_code == 201 and response.json()["result"] is None


def test_an_invalid_tokenizer_spec_is_refused_with_field_paths(app_client, tokens):
    raw = tokenizer_spec(mode="expand", options={"vocab_sise": 10})
    response = app_client.post("/v1/jobs", json=raw, headers=auth(tokens["alice"]))
    assert response.status_code == 422
    locs = [problem["loc"] for problem in response.json()["detail"]]
    assert ["body", "options", "vocab_sise"] in locs


def test_the_jobs_own_token_reports_its_result(app_client, settings, session, job):
    response = app_client.post(
        f"/v1/jobs/{job['id']}/result", json=result(settings, job), headers=auth(job_token(settings, job["id"]))
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"] == result(settings, job)
    kinds = session.scalars(select(Event.kind).where(Event.job_id == job["id"])).all()
    assert "result.reported" in kinds


def test_a_retried_report_replaces_the_first(app_client, settings, job):
    token = auth(job_token(settings, job["id"]))
    app_client.post(f"/v1/jobs/{job['id']}/result", json=result(settings, job), headers=token)
    again = result(settings, job, report={"layout": {"vocab_size": 1}})
    response = app_client.post(f"/v1/jobs/{job['id']}/result", json=again, headers=token)
    assert response.status_code == 200 and response.json()["result"]["report"] == again["report"]


@pytest.mark.parametrize("who", ["alice", "viewer", "other-job"])
def test_nobody_else_may_report_a_result(app_client, settings, tokens, job, who):
    if who == "other-job":
        other = app_client.post(
            "/v1/jobs", json=tokenizer_spec(name="other"), headers=auth(tokens["alice"])
        ).json()
        token = job_token(settings, other["id"])
    else:
        token = tokens[who]
    response = app_client.post(f"/v1/jobs/{job['id']}/result", json=result(settings, job), headers=auth(token))
    assert response.status_code == 403


def test_a_result_for_another_attempt_or_a_pretrain_job_is_a_conflict(
    app_client, settings, tokens, tiny_spec, job
):
    token = auth(job_token(settings, job["id"]))
    stale = app_client.post(f"/v1/jobs/{job['id']}/result", json=result(settings, job, attempt=3), headers=token)
    assert stale.status_code == 409 and "attempt 0, not 3" in stale.json()["detail"]

    pretrain = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()
    response = app_client.post(
        f"/v1/jobs/{pretrain['id']}/result", json=result(settings, pretrain), headers=auth(tokens["admin"])
    )
    assert response.status_code == 409 and "only tokenizer and data jobs" in response.json()["detail"]


@pytest.mark.parametrize(
    "where",
    ["../../etc", "/etc/passwd", "own/../../other-9/tokenizer", "own", "relative/tokenizer", "other"],
)
def test_a_result_outside_the_jobs_own_directory_is_refused_naming_the_path(app_client, settings, tokens, job, where):
    """A later job reads a tokenizer job's result (options.base, tokenizer.path): it must be its own."""
    own = checkpoints.job_directory(job["id"], job["name"], settings)
    path = {
        "own": own,  # the directory itself, not something in it
        "other": f"{settings.checkpoint_root}/other-9/tokenizer",
        "own/../../other-9/tokenizer": f"{own}/../../other-9/tokenizer",
    }.get(where, where)
    response = app_client.post(
        f"/v1/jobs/{job['id']}/result", json=result(settings, job, path=path), headers=auth(job_token(settings, job["id"]))
    )
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "path"] and own in problem["msg"]
    assert app_client.get(f"/v1/jobs/{job['id']}", headers=auth(tokens["viewer"])).json()["result"] is None


def test_a_malformed_result_is_refused(app_client, settings, job):
    token = auth(job_token(settings, job["id"]))
    for body in ({"path": "/x", "report": {}}, result(settings, job, extra=1), result(settings, job, path="")):
        response = app_client.post(f"/v1/jobs/{job['id']}/result", json=body, headers=token)
        assert response.status_code == 422, body


def test_the_rollback_route_refuses_a_tokenizer_job(app_client, tokens, job):
    response = app_client.post(
        f"/v1/jobs/{job['id']}/rollback", json={"reason": "spike"}, headers=auth(tokens["oncall"])
    )
    assert response.status_code == 409
    assert "tokenizer job" in response.json()["detail"] and "rolled back" in response.json()["detail"]


def test_planning_a_tokenizer_spec_says_there_is_no_plan(app_client, tokens):
    response = app_client.post("/v1/plan", json=tokenizer_spec(), headers=auth(tokens["viewer"]))
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "kind"]
    assert "no memory or compute plan" in problem["msg"]
