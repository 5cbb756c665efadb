"""Through the API, paths stay where the install allows: a tokenizer job cannot train on
/etc/passwd (its vocabulary is readable by every viewer), a plan cannot point at /etc, and a
trainer cannot register `../../etc/passwd` as a checkpoint a later attempt would restore."""

from __future__ import annotations

from typing import Any

import pytest

from service.checkpoints import job_directory
from service.db.models import Role
from service.db.session import get_sessionmaker
from service.tokens import mint_token
from tests.conftest import auth


def tokenizer_spec(**changes: Any) -> dict[str, Any]:
    return {
        "name": "zh-tokenizer",
        "kind": "tokenizer",
        "mode": "train",
        "corpora": ["embedded:zh"],
        "options": {"vocab_size": 4000},
    } | changes


def refused_at(response, loc: list[str | int]) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    matching = [d for d in response.json()["detail"] if d["loc"] == loc]
    assert matching, response.json()
    return matching[0]


def test_a_tokenizer_job_on_etc_passwd_is_refused_naming_the_corpus(app_client, tokens):
    response = app_client.post(
        "/v1/jobs",
        json=tokenizer_spec(corpora=["embedded:zh", "/etc/passwd"]),
        headers=auth(tokens["alice"]),
    )
    problem = refused_at(response, ["body", "corpora", 1])
    assert "'/etc/passwd' is outside the allowed roots" in problem["msg"]
    listed = app_client.get("/v1/jobs", headers=auth(tokens["viewer"])).json()["data"]
    assert listed == []  # nothing was stored, so nothing runs


def test_a_report_corpus_and_an_expand_base_outside_the_roots_are_refused(app_client, tokens):
    measured = tokenizer_spec(options={"vocab_size": 4000, "report_corpora": {"x": "/etc/shadow"}})
    response = app_client.post("/v1/jobs", json=measured, headers=auth(tokens["alice"]))
    assert "/etc/shadow" in refused_at(response, ["body", "options", "report_corpora", "x"])["msg"]
    expand = tokenizer_spec(mode="expand", options={"base": "../../../../etc", "add": 10})
    response = app_client.post("/v1/jobs", json=expand, headers=auth(tokens["alice"]))
    assert "'..'" in refused_at(response, ["body", "options", "base"])["msg"]


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "file:///etc/passwd"])
def test_submission_and_plan_refuse_a_data_path_outside_the_roots(app_client, tokens, tiny_spec, path):
    tiny_spec["stages"][0]["data"][0]["path"] = path
    for route in ("/v1/jobs", "/v1/plan"):
        response = app_client.post(route, json=tiny_spec, headers=auth(tokens["alice"]))
        assert repr(path) in refused_at(response, ["body", "stages", 0, "data", 0, "path"])["msg"]


def test_a_data_path_under_the_state_directory_is_accepted(app_client, tokens, tiny_spec, settings):
    tiny_spec["stages"][0]["data"][0]["path"] = str(settings.state_dir.resolve() / "corpora" / "code")
    response = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"]))
    assert response.status_code == 201, response.text


@pytest.fixture
def job_and_token(app_client, tokens, tiny_spec, settings) -> tuple[dict[str, Any], str]:
    job = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()
    with get_sessionmaker(settings.resolved_database_url)() as session:
        _, token = mint_token(
            session, name="job-a0", role=Role.VIEWER, created_by="test", job_id=job["id"], attempt=0
        )
    return job, token


def report(path: str) -> dict[str, Any]:
    return {"attempt": 0, "step": 10, "tokens": 10, "path": path, "manifest_sha256": "a" * 64}


def test_a_checkpoint_report_outside_the_jobs_directory_is_refused_naming_path(
    app_client, job_and_token, settings, tokens
):
    job, token = job_and_token
    own = job_directory(job["id"], job["name"], settings)
    other_job = job_directory(job["id"] + 1, job["name"], settings)
    for path in ("../../etc/passwd", "/etc/passwd", f"{own}/../../etc", own, f"{other_job}/step-00000010"):
        response = app_client.post(f"/v1/jobs/{job['id']}/checkpoints", json=report(path), headers=auth(token))
        assert own in refused_at(response, ["body", "path"])["msg"], path

    listed = app_client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=auth(tokens["viewer"])).json()
    assert listed == []  # none stored as verified, none offered as a rollback target
    accepted = app_client.post(
        f"/v1/jobs/{job['id']}/checkpoints", json=report(f"{own}/step-00000010"), headers=auth(token)
    )
    assert accepted.status_code == 201, accepted.text
