"""What trainers report: metrics and checkpoints, each only with the job's own token, idempotently."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from service.checkpoints import job_directory
from service.db import repo
from service.db.models import AttemptReason, AttemptState, Job, MetricPoint, Role
from service.db.session import get_sessionmaker
from service.tokens import mint_token
from tests.conftest import ADMIN_TOKEN, auth

TOKENS_PER_STEP = 2048  # examples/tiny-cpu.yaml: 16 sequences of 128 tokens


@pytest.fixture
def two_jobs(app_client, tokens, tiny_spec, settings):
    """Two submitted jobs of 1,032 steps each, and a job token for each."""
    tiny_spec["stages"][0]["tokens"] = 1000 * TOKENS_PER_STEP
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


def test_a_checkpoint_registers_once_and_a_different_one_at_the_same_step_conflicts(app_client, two_jobs, settings):
    (job_a, _), (token_a, _) = two_jobs
    path = f"{job_directory(job_a, 'ingest-a', settings)}/step-00000040"
    checkpoint = {"attempt": 0, "step": 40, "tokens": 81920, "path": path, "manifest_sha256": "b" * 64}

    first = app_client.post(f"/v1/jobs/{job_a}/checkpoints", json=checkpoint, headers=auth(token_a))
    again = app_client.post(f"/v1/jobs/{job_a}/checkpoints", json=checkpoint, headers=auth(token_a))
    other = app_client.post(f"/v1/jobs/{job_a}/checkpoints", json={**checkpoint, "manifest_sha256": "c" * 64}, headers=auth(token_a))

    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert first.json()["id"] == again.json()["id"] and first.json()["verified"] is True
    listed = app_client.get(f"/v1/jobs/{job_a}/checkpoints", headers=auth(ADMIN_TOKEN)).json()
    assert [c["step"] for c in listed] == [40]
    events = app_client.get(f"/v1/jobs/{job_a}/events", headers=auth(ADMIN_TOKEN)).json()["data"]
    assert [e["kind"] for e in events].count("checkpoint.published") == 1


def test_a_checkpoint_for_an_attempt_that_does_not_exist_is_refused(app_client, two_jobs, settings):
    (job_a, _), (token_a, _) = two_jobs
    path = f"{job_directory(job_a, 'ingest-a', settings)}/step-00000001"
    checkpoint = {"attempt": 3, "step": 1, "tokens": 1, "path": path, "manifest_sha256": "d" * 64}
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
        path = f"{job_directory(job_a, 'ingest-a', settings)}/step-{step:08d}"
        checkpoint = {"attempt": 0, "step": step, "tokens": step, "path": path, "manifest_sha256": f"{step:064x}"}
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


# --- what a record may claim: its job's newest attempt, a step the job reaches, a live job ----------


def set_job_state(settings, job_id: int, state: str) -> None:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        session.get(Job, job_id).state = state
        session.commit()


def open_attempt(settings, job_id: int, number: int) -> None:
    """Attempt `number` replaces the newest one, as a rollback does."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = repo.get_job(session, job_id=job_id)
        job.attempts[-1].state = AttemptState.SUPERSEDED
        repo.add_attempt(session, job=job, number=number, reason=AttemptReason.ROLLBACK)
        session.commit()


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
def test_a_finished_job_takes_no_more_metrics(app_client, two_jobs, settings, state):
    (job_a, _), (token_a, _) = two_jobs
    set_job_state(settings, job_a, state)
    response = app_client.post(f"/v1/jobs/{job_a}/metrics", json=[record(job_a, 0, loss=1.0)], headers=auth(token_a))
    assert response.status_code == 409
    assert response.json()["detail"] == f"job {job_a} is {state}: it takes no more metrics"
    assert stored_points(settings) == 0


def test_records_of_a_superseded_attempt_are_refused_and_the_new_attempts_taken(app_client, two_jobs, settings):
    (job_a, _), (token_a, _) = two_jobs
    open_attempt(settings, job_a, 1)

    stale = app_client.post(f"/v1/jobs/{job_a}/metrics", json=[record(job_a, 70, loss=1.0)], headers=auth(token_a))
    fresh = app_client.post(f"/v1/jobs/{job_a}/metrics", json=[{**record(job_a, 60, loss=1.0), "attempt": 1}], headers=auth(token_a))

    assert stale.status_code == 409  # the trainer's sink drops a 4xx: the old attempt stops here
    assert stale.json()["detail"] == f"job {job_a} attempt 0 was superseded by attempt 1"
    assert fresh.status_code == 202 and fresh.json()["stored"] == 1
    assert stored_points(settings) == 1


def test_a_batch_with_one_stale_record_is_refused_whole(app_client, two_jobs, settings):
    (job_a, _), (token_a, _) = two_jobs
    open_attempt(settings, job_a, 1)
    batch = [{**record(job_a, 60, loss=1.0), "attempt": 1}, record(job_a, 61, loss=1.0)]
    assert app_client.post(f"/v1/jobs/{job_a}/metrics", json=batch, headers=auth(token_a)).status_code == 409
    assert stored_points(settings) == 0


def test_a_record_for_an_attempt_the_job_never_had_is_refused(app_client, two_jobs, settings):
    (job_a, _), (token_a, _) = two_jobs
    response = app_client.post(f"/v1/jobs/{job_a}/metrics", json=[{**record(job_a, 0, loss=1.0), "attempt": 2}], headers=auth(token_a))
    assert response.status_code == 409 and response.json()["detail"] == f"job {job_a} has no attempt 2"
    assert stored_points(settings) == 0


def test_an_attempt_token_reports_for_its_own_attempt_only(app_client, two_jobs, settings):
    (job_a, _), _ = two_jobs
    with get_sessionmaker(settings.resolved_database_url)() as session:
        _, token = mint_token(session, name="job-a-a0", role=Role.VIEWER, created_by="test", job_id=job_a, attempt=0)
    open_attempt(settings, job_a, 1)

    claims_the_new_one = app_client.post(f"/v1/jobs/{job_a}/metrics", json=[{**record(job_a, 60, loss=1.0), "attempt": 1}], headers=auth(token))
    its_own = app_client.post(f"/v1/jobs/{job_a}/metrics", json=[record(job_a, 60, loss=1.0)], headers=auth(token))

    assert claims_the_new_one.status_code == 403
    assert claims_the_new_one.json()["detail"] == f"this token reports for attempt 0 of job {job_a}, not attempt 1"
    assert its_own.status_code == 409  # its attempt was superseded
    assert stored_points(settings) == 0


def test_a_step_past_the_jobs_last_is_refused_with_its_field_path(app_client, two_jobs, settings):
    (job_a, _), (token_a, _) = two_jobs  # 1,032 steps: 0 to 1,031, the eval after the last at 1,032
    last = [record(job_a, 1031, loss=1.0), {**record(job_a, 1032, **{"eval/ppl": 9.0}), "phase": "eval"}]
    assert app_client.post(f"/v1/jobs/{job_a}/metrics", json=last, headers=auth(token_a)).status_code == 202

    response = app_client.post(f"/v1/jobs/{job_a}/metrics", json=[record(job_a, 5, loss=1.0), record(job_a, 1033, loss=1.0)], headers=auth(token_a))

    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", 1, "step"]
    assert problem["msg"] == f"step 1033 is past job {job_a}'s last step (1032 steps)"
    assert stored_points(settings) == 2


@pytest.mark.parametrize(
    ("bad", "loc"),
    [
        ({"step": -1}, ["body", 1, "step"]),
        ({"step": "7"}, ["body", 1, "step"]),  # the stream carries the JSON as sent: no coercion
        ({"step": 7.0}, ["body", 1, "step"]),
        ({"attempt": None}, ["body", 1, "attempt"]),
        ({"metrics": {"loss": "nan"}}, ["body", 1, "metrics", "loss", "float"]),
        ({"metrics": {"bad name": 1.0}}, ["body", 1, "metrics", "bad name", "[key]"]),
        ({"stage": "a\x00b"}, ["body", 1, "stage"]),
        ({"surprise": 1}, ["body", 1, "surprise"]),
    ],
)
def test_a_malformed_record_is_a_422_naming_its_field_and_stores_nothing(app_client, two_jobs, settings, bad, loc):
    (job_a, _), (token_a, _) = two_jobs
    batch = [record(job_a, 6, loss=1.0), {**record(job_a, 7, loss=1.0), **bad}]
    response = app_client.post(f"/v1/jobs/{job_a}/metrics", json=batch, headers=auth(token_a))
    assert response.status_code == 422
    assert loc in [problem["loc"] for problem in response.json()["detail"]]
    assert stored_points(settings) == 0


def test_a_body_that_is_not_json_is_a_422(app_client, two_jobs):
    (job_a, _), (token_a, _) = two_jobs
    response = app_client.post(f"/v1/jobs/{job_a}/metrics", content=b'[{"job": ', headers=auth(token_a))
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_the_copy_path_keeps_points_exact_and_counts_only_new_ones(app_client, two_jobs, settings):
    # A regression guard for the COPY fast path (it passes on the ORM insert it replaced): a batch
    # overlapping stored points, a point twice in one batch, and text COPY must escape.
    (job_a, _), (token_a, _) = two_jobs
    first = [record(job_a, step, loss=3.0, lr=1e-3) for step in range(0, 10)]
    overlapping = [record(job_a, step, loss=3.0, lr=1e-3) for step in range(5, 15)]
    twice = [record(job_a, 20, loss=3.0), record(job_a, 20, loss=3.0)]
    stage = "warm\tup\\n\nline\r"
    odd = [{**record(job_a, 21, loss=0.1 + 0.2, lr=1e-05, big=1.7976931348623157e308), "stage": stage, "phase": "a\\b"}]

    assert app_client.post(f"/v1/jobs/{job_a}/metrics", json=first, headers=auth(token_a)).json()["stored"] == 20
    assert app_client.post(f"/v1/jobs/{job_a}/metrics", json=overlapping, headers=auth(token_a)).json() == {"received": 20, "stored": 10}
    assert app_client.post(f"/v1/jobs/{job_a}/metrics", json=twice, headers=auth(token_a)).json() == {"received": 2, "stored": 1}
    assert app_client.post(f"/v1/jobs/{job_a}/metrics", json=odd, headers=auth(token_a)).json()["stored"] == 3

    assert stored_points(settings) == 34
    points = app_client.get(f"/v1/jobs/{job_a}/metrics", params={"min_step": 21}, headers=auth(ADMIN_TOKEN)).json()
    assert {(p["name"], p["value"], p["stage"], p["phase"]) for p in points} == {
        ("loss", 0.1 + 0.2, stage, "a\\b"), ("lr", 1e-05, stage, "a\\b"), ("big", 1.7976931348623157e308, stage, "a\\b"),
    }  # fmt: skip
