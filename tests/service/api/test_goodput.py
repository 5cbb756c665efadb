"""GET /v1/jobs/{id}/goodput and the job's progress, from metrics a trainer reported over HTTP."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from service.db.models import Role
from service.db.session import get_sessionmaker
from service.tokens import mint_token
from tests.conftest import ADMIN_TOKEN, auth

STEP_S = 0.01


@pytest.fixture
def reported_job(app_client, tokens, tiny_spec, settings):
    """A submitted job whose attempt 0 reported steps 0-3 (each 10 ms, from submission on) and a save."""
    job = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()
    with get_sessionmaker(settings.resolved_database_url)() as session:
        _, token = mint_token(session, name="job-a0", role=Role.VIEWER, created_by="test", job_id=job["id"])
    submitted = datetime.fromisoformat(job["created_at"]).timestamp()
    records = [
        {"job": str(job["id"]), "attempt": 0, "step": step, "stage": "pretrain", "phase": "stable", "tokens": 2048 * (step + 1),
         "metrics": {"loss": 5.0, "time/step_end_s": submitted + STEP_S * (step + 1), "throughput/step_time_s": STEP_S,
                     "throughput/tokens_per_s": 2048 / STEP_S}}
        for step in range(4)
    ]  # fmt: skip
    records.append(
        {"job": str(job["id"]), "attempt": 0, "step": 4, "stage": "pretrain", "phase": "checkpoint", "tokens": 4 * 2048,
         "metrics": {"checkpoint/save_s": 0.001}}
    )  # fmt: skip
    # Reported once the steps are over, as a trainer does: the save then ends after them.
    time.sleep(max(0.0, submitted + 5 * STEP_S - time.time()))
    response = app_client.post(f"/v1/jobs/{job['id']}/metrics", json=records, headers=auth(token))
    assert response.status_code == 202, response.text
    return job


def test_goodput_splits_the_wall_time_and_counts_the_reported_steps_as_productive(app_client, reported_job):
    response = app_client.get(f"/v1/jobs/{reported_job['id']}/goodput", headers=auth(ADMIN_TOKEN))

    assert response.status_code == 200, response.text
    body = response.json()
    categories = body["categories"]
    assert set(categories) == {"productive", "lost", "checkpoint", "startup", "queued", "stalled", "other"}
    assert sum(c["seconds"] for c in categories.values()) == pytest.approx(body["wall_s"], abs=1e-6)
    assert categories["productive"]["seconds"] == pytest.approx(4 * STEP_S, abs=1e-6)
    assert categories["checkpoint"]["seconds"] == pytest.approx(0.001, abs=1e-6)
    assert categories["lost"]["seconds"] == 0 and body["lost_steps"] == 0
    assert body["goodput"] == pytest.approx(categories["productive"]["seconds"] / body["wall_s"])
    assert body["state"] == "pending" and body["planned_training_s"] > 0
    assert body["realised_training_s"] == categories["productive"]["seconds"]


def test_the_job_shows_its_progress_and_eta(app_client, reported_job):
    job = app_client.get(f"/v1/jobs/{reported_job['id']}", headers=auth(ADMIN_TOKEN)).json()

    total = job["derived"]["total_train_iters"]
    progress = job["progress"]
    assert progress["steps_done"] == 4 and progress["total_steps"] == total
    assert progress["percent"] == pytest.approx(400 / total)
    assert progress["tokens_per_s"] == pytest.approx(2048 / STEP_S)
    assert progress["eta_s"] == pytest.approx((total - 4) * STEP_S)
    listed = app_client.get("/v1/jobs", headers=auth(ADMIN_TOKEN)).json()["data"]
    assert listed[0]["progress"]["steps_done"] == 4


def test_goodput_of_an_unknown_job_is_404_naming_it(app_client):
    response = app_client.get("/v1/jobs/999999/goodput", headers=auth(ADMIN_TOKEN))
    assert response.status_code == 404 and "job 999999 not found" in response.json()["detail"]
