"""What trainers report: metrics and checkpoints, each only with the job's own token, idempotently."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from service.db.models import MetricPoint, Role
from service.db.session import get_sessionmaker
from service.tokens import mint_token
from tests.conftest import ADMIN_TOKEN, auth


@pytest.fixture
def two_jobs(app_client, tokens, tiny_spec, settings):
    """Two submitted jobs and a job token for each."""
    ids = []
    for name in ("ingest-a", "ingest-b"):
        response = app_client.post("/v1/jobs", json={**tiny_spec, "name": name}, headers=auth(tokens["alice"]))
        ids.append(response.json()["id"])
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job_tokens = [
            mint_token(session, name=f"job-{i}-a0", role=Role.VIEWER, created_by="test", job_id=i)[1] for i in ids
        ]
    return ids, job_tokens


def record(job_id: int, step: int, **metrics) -> dict:
    return {"job": str(job_id), "attempt": 0, "step": step, "stage": "pretrain", "phase": "stable", "tokens": 2048 * (step + 1), "metrics": metrics}


def stored_points(settings) -> int:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return session.scalar(select(func.count()).select_from(MetricPoint))


def test_a_job_token_writes_metrics_and_a_retried_batch_changes_nothing(app_client, two_jobs, settings):
    (job_a, _), (token_a, _) = two_jobs
    batch = [record(job_a, 0, loss=6.2, **{"loss/zh": 6.5}), record(job_a, 1, loss=6.1)]

    first = app_client.post(f"/v1/jobs/{job_a}/metrics", json=batch, headers=auth(token_a))
    again = app_client.post(f"/v1/jobs/{job_a}/metrics", json=batch, headers=auth(token_a))

    assert first.status_code == 202 and first.json() == {"received": 3, "stored": 3}
    assert again.json() == {"received": 3, "stored": 0}
    assert stored_points(settings) == 3
    series = app_client.get(f"/v1/jobs/{job_a}/metrics", params={"name": "loss"}, headers=auth(ADMIN_TOKEN)).json()
    assert [(p["step"], p["value"]) for p in series] == [(0, 6.2), (1, 6.1)]


def test_nonfinite_values_travel_as_strings_and_come_back_as_such(app_client, two_jobs):
    (job_a, _), (token_a, _) = two_jobs
    batch = [record(job_a, 5, loss="NaN", grad_norm="Infinity")]
    assert app_client.post(f"/v1/jobs/{job_a}/metrics", json=batch, headers=auth(token_a)).status_code == 202
    points = app_client.get(f"/v1/jobs/{job_a}/metrics", headers=auth(ADMIN_TOKEN)).json()
    assert {(p["name"], p["value"], p["nonfinite"]) for p in points} == {("grad_norm", None, "Infinity"), ("loss", None, "NaN")}


def test_a_token_for_job_a_cannot_write_job_b(app_client, two_jobs, settings):
    (job_a, job_b), (token_a, _) = two_jobs
    response = app_client.post(f"/v1/jobs/{job_b}/metrics", json=[record(job_b, 0, loss=1.0)], headers=auth(token_a))
    assert response.status_code == 403
    assert f"belongs to job {job_a}, not job {job_b}" in response.json()["detail"]
    checkpoint = {"attempt": 0, "step": 4, "tokens": 1, "path": "/x", "manifest_sha256": "a" * 64}
    assert app_client.post(f"/v1/jobs/{job_b}/checkpoints", json=checkpoint, headers=auth(token_a)).status_code == 403
    assert stored_points(settings) == 0


def test_a_job_token_can_do_nothing_else(app_client, two_jobs):
    (job_a, _), (token_a, _) = two_jobs
    for method, path in [("get", "/v1/jobs"), ("get", f"/v1/jobs/{job_a}"), ("post", f"/v1/jobs/{job_a}/cancel")]:
        assert getattr(app_client, method)(path, headers=auth(token_a)).status_code == 403


def test_records_must_name_the_job_they_are_posted_to(app_client, two_jobs):
    (job_a, job_b), (token_a, _) = two_jobs
    response = app_client.post(f"/v1/jobs/{job_a}/metrics", json=[record(job_b, 0, loss=1.0)], headers=auth(token_a))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", 0, "job"]


def test_a_checkpoint_registers_once_and_a_different_one_at_the_same_step_conflicts(app_client, two_jobs):
    (job_a, _), (token_a, _) = two_jobs
    checkpoint = {"attempt": 0, "step": 40, "tokens": 81920, "path": "/ckpt/step-00000040", "manifest_sha256": "b" * 64}

    first = app_client.post(f"/v1/jobs/{job_a}/checkpoints", json=checkpoint, headers=auth(token_a))
    again = app_client.post(f"/v1/jobs/{job_a}/checkpoints", json=checkpoint, headers=auth(token_a))
    other = app_client.post(f"/v1/jobs/{job_a}/checkpoints", json={**checkpoint, "manifest_sha256": "c" * 64}, headers=auth(token_a))

    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert first.json()["id"] == again.json()["id"] and first.json()["verified"] is True
    listed = app_client.get(f"/v1/jobs/{job_a}/checkpoints", headers=auth(ADMIN_TOKEN)).json()
    assert [c["step"] for c in listed] == [40]
    events = app_client.get(f"/v1/jobs/{job_a}/events", headers=auth(ADMIN_TOKEN)).json()["data"]
    assert [e["kind"] for e in events].count("checkpoint.published") == 1


def test_a_checkpoint_for_an_attempt_that_does_not_exist_is_refused(app_client, two_jobs):
    (job_a, _), (token_a, _) = two_jobs
    checkpoint = {"attempt": 3, "step": 1, "tokens": 1, "path": "/x", "manifest_sha256": "d" * 64}
    response = app_client.post(f"/v1/jobs/{job_a}/checkpoints", json=checkpoint, headers=auth(token_a))
    assert response.status_code == 409 and "has no attempt 3" in response.json()["detail"]


def test_pause_needs_oncall_and_resume_needs_a_paused_job(app_client, tokens, two_jobs):
    (job_a, _), _ = two_jobs
    assert app_client.post(f"/v1/jobs/{job_a}/pause", headers=auth(tokens["alice"])).status_code == 403
    paused = app_client.post(f"/v1/jobs/{job_a}/pause", json={"reason": "bad data"}, headers=auth(tokens["oncall"]))
    assert paused.status_code == 200 and paused.json()["desired_state"] == "paused"
    assert app_client.post(f"/v1/jobs/{job_a}/pause", headers=auth(tokens["oncall"])).status_code == 409
    # The controller has not stopped it yet: it is not paused, so it cannot be resumed.
    resumed = app_client.post(f"/v1/jobs/{job_a}/resume", headers=auth(tokens["oncall"]))
    assert resumed.status_code == 409 and "not paused" in resumed.json()["detail"]
    attempts = app_client.get(f"/v1/jobs/{job_a}/attempts", headers=auth(tokens["viewer"])).json()
    assert [(a["number"], a["reason"]) for a in attempts] == [(0, "launch")]


def test_checkpoints_the_trainer_prunes_stop_being_usable(app_client, two_jobs, settings):
    (job_a, _), (token_a, _) = two_jobs
    # examples/tiny-cpu.yaml keeps the newest 3 checkpoints on disk.
    for step in (40, 80, 120, 160, 200):
        checkpoint = {"attempt": 0, "step": step, "tokens": step, "path": f"/c/{step}", "manifest_sha256": f"{step:064x}"}
        assert app_client.post(f"/v1/jobs/{job_a}/checkpoints", json=checkpoint, headers=auth(token_a)).status_code == 201
    listed = app_client.get(f"/v1/jobs/{job_a}/checkpoints", headers=auth(ADMIN_TOKEN)).json()
    assert [(c["step"], c["usable"]) for c in listed] == [(40, False), (80, False), (120, True), (160, True), (200, True)]


def test_long_series_come_back_downsampled_on_request(app_client, two_jobs):
    (job_a, _), (token_a, _) = two_jobs
    for start in range(0, 1000, 200):  # the test server caps bodies at 64 KiB
        batch = [record(job_a, step, loss=5.0 - step / 1000) for step in range(start, start + 200)]
        assert app_client.post(f"/v1/jobs/{job_a}/metrics", json=batch, headers=auth(token_a)).status_code == 202
    series = app_client.get(f"/v1/jobs/{job_a}/metrics", params={"name": "loss", "max_points": 100}, headers=auth(ADMIN_TOKEN)).json()
    steps = [p["step"] for p in series]
    assert 90 <= len(steps) <= 101 and steps[0] == 0 and steps[-1] == 999 and steps == sorted(steps)
