"""An ingest token speaks for one attempt of one job, and only while that attempt lives.

It registers checkpoints for its own attempt only (403 otherwise); a finished job, or an attempt
that ended, registers nothing (409); and the token is revoked in the same transaction that ends
its attempt: superseded by a rollback, cancelled, failed or succeeded (the controller's tests
check the last two, with the workload's own token).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service import attempts
from service.checkpoints import job_directory
from service.db import repo
from service.db.models import AttemptReason, AttemptState, Role
from service.db.session import get_sessionmaker
from service.tokens import mint_token
from tests.conftest import ADMIN_TOKEN, auth
from tests.service.checkpoint_dirs import write_checkpoint


@pytest.fixture
def job(app_client, tokens, tiny_spec) -> int:
    return app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()["id"]


def attempt_token(settings, job_id: int, attempt: int) -> str:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return mint_token(session, name=f"job-{job_id}-a{attempt}", role=Role.VIEWER, created_by="controller", job_id=job_id, attempt=attempt)[1]


def checkpoint(settings, job_id: int, attempt: int, step: int = 40) -> dict:
    """A checkpoint sealed in the job's own directory (tiny-cpu-<id>) and its report, as a trainer
    leaves and sends them: a rollback restores only what the volume confirms."""
    folder = Path(job_directory(job_id, "tiny-cpu", settings)) / f"step-{step:08d}"
    sha = write_checkpoint(folder, step=step, attempt=attempt, tokens=step)
    return {"attempt": attempt, "step": step, "tokens": step, "path": str(folder), "manifest_sha256": sha}


def post_checkpoint(app_client, job_id: int, token: str, body: dict):
    return app_client.post(f"/v1/jobs/{job_id}/checkpoints", json=body, headers=auth(token))


def test_an_attempts_token_registers_checkpoints_for_that_attempt_only(app_client, job, settings):
    token = attempt_token(settings, job, 0)
    refused = post_checkpoint(app_client, job, token, checkpoint(settings, job, attempt=1))
    assert refused.status_code == 403 and "attempt 0" in refused.json()["detail"]
    assert post_checkpoint(app_client, job, token, checkpoint(settings, job, attempt=0)).status_code == 201


def test_a_rollback_revokes_the_superseded_attempts_token(app_client, job, settings, tokens):
    token = attempt_token(settings, job, 0)
    assert post_checkpoint(app_client, job, token, checkpoint(settings, job, attempt=0, step=40)).status_code == 201
    body = {"reason": "bad data", "to_step": 40, "attempt": 0}
    assert app_client.post(f"/v1/jobs/{job}/rollback", json=body, headers=auth(tokens["oncall"])).status_code == 201

    late = post_checkpoint(app_client, job, token, checkpoint(settings, job, attempt=0, step=80))
    metrics = app_client.post(f"/v1/jobs/{job}/metrics", json=[], headers=auth(token))

    assert late.status_code == 401 and metrics.status_code == 401
    events = app_client.get(f"/v1/jobs/{job}/events", headers=auth(tokens["viewer"])).json()["data"]
    assert any(e["kind"] == "token.revoked" and e["attempt"] == 0 for e in events)


def test_cancelling_revokes_the_jobs_tokens_and_a_finished_job_registers_nothing(app_client, job, settings, tokens):
    token = attempt_token(settings, job, 0)
    assert app_client.post(f"/v1/jobs/{job}/cancel", headers=auth(tokens["alice"])).status_code == 200

    assert post_checkpoint(app_client, job, token, checkpoint(settings, job, attempt=0)).status_code == 401
    finished = post_checkpoint(app_client, job, ADMIN_TOKEN, checkpoint(settings, job, attempt=0))
    assert finished.status_code == 409 and "already cancelled" in finished.json()["detail"]


def test_an_attempt_that_ended_registers_nothing_and_its_token_is_gone(app_client, job, settings):
    token = attempt_token(settings, job, 0)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        found = repo.get_job(session, job_id=job, for_update=True)
        attempts.end_attempt(session, job=found, attempt=found.attempts[0], state=AttemptState.FAILED, actor="controller", reason="evicted")
        attempts.open_attempt(session, job=found, reason=AttemptReason.POD_FAILURE, actor="controller", why="evicted", resume_from=None)
        session.commit()

    assert post_checkpoint(app_client, job, token, checkpoint(settings, job, attempt=0)).status_code == 401
    ended = post_checkpoint(app_client, job, ADMIN_TOKEN, checkpoint(settings, job, attempt=0))
    assert ended.status_code == 409 and "attempt 0 is failed" in ended.json()["detail"]
    assert post_checkpoint(app_client, job, attempt_token(settings, job, 1), checkpoint(settings, job, attempt=1)).status_code == 201
