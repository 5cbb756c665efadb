"""/v1/jobs/{id}/evaluations: scores stored per step and task, reported only by the evaluation's own token."""

from __future__ import annotations

from service import evaluations, ingest, tokens
from service.db import repo
from service.db.models import Role
from service.db.session import get_sessionmaker
from service.tokens import mint_token
from tests.conftest import auth

SCORE = {"task": "continuation-en", "acc": 0.5, "acc_stderr": 0.05, "acc_norm": 0.375, "acc_norm_stderr": 0.05,
         "nll": 2.25, "samples": 64, "num_fewshot": 1}  # fmt: skip
EVALUATION = {
    "benchmarks": [
        {"task": "continuation-en", "path": "benchmarks/en.jsonl", "num_fewshot": 1},
        {"task": "continuation-code", "path": "benchmarks/code.jsonl"},
    ],
    "checkpoints": {"every": 1},
}


def test_an_evaluation_reports_its_scores_and_anyone_may_read_them(
    app_client, tokens, tiny_spec, settings
):
    job = app_client.post(
        "/v1/jobs", json={**tiny_spec, "evaluation": EVALUATION}, headers=auth(tokens["alice"])
    )
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    with get_sessionmaker(settings.resolved_database_url)() as session:
        ingest.record_checkpoint(
            session, job_id=job_id, attempt=0, step=40, tokens=40 * 2048,
            path=f"/checkpoints/tiny-cpu-{job_id}/step-00000040", manifest_sha256="0" * 64, actor="trainer",
        )  # fmt: skip
        # What the controller does: rows for the chosen checkpoint, a token, the rows running.
        added = evaluations.schedule(session, repo.get_job(session, job_id=job_id))
        evaluation_token = tokens_of(session, job_id)
        evaluations.mark_running(added)
        attempt_token = mint_token(session, name=f"job-{job_id}-a0", role=Role.VIEWER, created_by="test",
                                   job_id=job_id, attempt=0, commit=False)[1]  # fmt: skip
        session.commit()
    url = f"/v1/jobs/{job_id}/evaluations"

    listed = app_client.get(url, headers=auth(tokens["viewer"])).json()["evaluations"]
    assert [(e["step"], e["task"], e["state"]) for e in listed] == [
        (40, "continuation-en", "running"), (40, "continuation-code", "running"),
    ]  # fmt: skip

    report = {"step": 40, "results": [SCORE, {**SCORE, "task": "continuation-code", "acc": 0.25}]}
    assert app_client.post(url, json=report, headers=auth(attempt_token)).status_code == 403
    assert (
        app_client.post(
            url, json={**report, "step": 80}, headers=auth(evaluation_token)
        ).status_code
        == 403
    )
    metrics = app_client.post(f"/v1/jobs/{job_id}/metrics", json=[], headers=auth(evaluation_token))
    assert metrics.status_code == 403 and "evaluation" in metrics.json()["detail"]
    bad = {"step": 40, "results": [{**SCORE, "acc": 1.5}]}
    refused = app_client.post(url, json=bad, headers=auth(evaluation_token))
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][-3:] == [
        "results",
        0,
        "acc",
    ]

    for _ in range(2):  # a retried report changes nothing
        taken = app_client.post(url, json=report, headers=auth(evaluation_token))
        assert taken.status_code == 200, taken.text

    listed = app_client.get(url, headers=auth(tokens["viewer"])).json()["evaluations"]
    assert [(e["task"], e["state"], e["acc"], e["nll"]) for e in listed] == [
        ("continuation-en", "succeeded", 0.5, 2.25), ("continuation-code", "succeeded", 0.25, 2.25),
    ]  # fmt: skip
    assert (
        listed[0]["acc_norm"] == 0.375
        and listed[0]["samples"] == 64
        and listed[0]["num_fewshot"] == 1
    )
    assert (
        app_client.get("/v1/jobs/999999/evaluations", headers=auth(tokens["viewer"])).status_code
        == 404
    )


def tokens_of(session, job_id: int) -> str:
    return tokens.mint_evaluation_token(session, job_id=job_id, step=40, actor="controller")
