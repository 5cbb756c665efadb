"""Rollback on real Postgres: the right checkpoint, the right skip range, one winner, a cap."""

from __future__ import annotations

import threading

import pytest

from service import attempts, checkpoints, ingest, jobs
from service.db.models import AttemptReason, Role
from service.db.session import get_sessionmaker
from service.errors import Conflict
from service.tokens import Principal
from service.watchdog.consumer import Watchdog
from service.watchdog.detector import Verdict
from service.watchdog.rollback import RollbackRequest, batch_index, roll_back
from tests.conftest import auth

ALICE = Principal(name="alice", role=Role.SUBMITTER)


@pytest.fixture
def running_job(pg_url, tiny_spec):
    """A job whose attempt 0 registered checkpoints every 40 steps up to 320."""
    tiny_spec["watchdog"] = {
        "rollback_margin_steps": 10,
        "skip_steps_after": 30,
        "max_rollbacks": 2,
        "rollback_window_steps": 500,
        "lr_scale_on_rollback": 0.5,
    }
    tiny_spec["checkpoint"]["keep_last"] = 10  # every checkpoint stays on disk
    sessions = get_sessionmaker(pg_url)
    with sessions() as session:
        job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
        for step in range(40, 321, 40):
            ingest.record_checkpoint(
                session, job_id=job.id, attempt=0, step=step, tokens=step, path=f"/c/{step}",
                manifest_sha256=f"{step:064x}", actor="trainer",
            )  # fmt: skip
    return sessions, job.id


def watchdog_request(onset: int, **kw) -> RollbackRequest:
    return RollbackRequest(onset_step=onset, reason=AttemptReason.ROLLBACK, why="divergence on loss/zh", actor="watchdog", **kw)


def test_a_rollback_resumes_before_the_onset_and_skips_the_bad_data(running_job):
    sessions, job_id = running_job
    with sessions() as session:
        outcome = roll_back(session, job_id=job_id, request=watchdog_request(205, expected_attempt=0))

    # Newest checkpoint at least 10 steps before onset 205 is step 160 (200 is too close).
    assert outcome.checkpoint.step == 160
    assert outcome.skip_range == [160, 205 + 30]
    with sessions() as session:
        job = jobs.repo.get_job(session, job_id=job_id)
        new = job.attempts[-1]
        assert (new.number, new.reason, new.state) == (1, "rollback", "pending")
        assert new.resume_from_checkpoint_id == outcome.checkpoint.id
        assert new.skip_ranges == [[160, 235]] and new.lr_scale == 0.5
        assert job.attempts[0].state == "superseded"
        usable = {c.step: c.usable for c in jobs.repo.list_checkpoints(session, job_id=job_id)}
    assert usable[160] is True
    assert [step for step, ok in usable.items() if not ok] == [200, 240, 280, 320]


def test_a_checkpoint_the_superseded_attempt_reports_after_the_rollback_is_not_usable(running_job):
    # The replaced trainer's save on SIGTERM, or a save that raced the rollback: trained on skipped data.
    sessions, job_id = running_job
    with sessions() as session:
        roll_back(session, job_id=job_id, request=watchdog_request(205, expected_attempt=0))
        late, created, _ = ingest.record_checkpoint(
            session, job_id=job_id, attempt=0, step=333, tokens=333, path="/c/333", manifest_sha256="d" * 64, actor="trainer"
        )
        assert created and late.usable is False
        fresh, _, _ = ingest.record_checkpoint(
            session, job_id=job_id, attempt=1, step=170, tokens=170, path="/c/a1-170", manifest_sha256="c" * 64, actor="trainer"
        )
        assert fresh.usable is True
        assert checkpoints.choose(session, job_id=job_id).step == 170


def test_a_second_rollback_maps_its_steps_through_the_first_skip(running_job):
    sessions, job_id = running_job
    with sessions() as session:
        roll_back(session, job_id=job_id, request=watchdog_request(205))
        ingest.record_checkpoint(
            session, job_id=job_id, attempt=1, step=200, tokens=200, path="/c/a1-200", manifest_sha256="e" * 64, actor="trainer"
        )
        second = roll_back(session, job_id=job_id, request=watchdog_request(230))
    # Step 200 of attempt 1 consumed batch 200 + 75 skipped = 275; the onset's end likewise.
    assert second.checkpoint.step == 200
    assert second.skip_range == [batch_index(200, [[160, 235]]), batch_index(260, [[160, 235]])]


def test_two_racing_rollbacks_have_exactly_one_winner(running_job):
    sessions, job_id = running_job
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def race() -> None:
        with sessions() as session:
            barrier.wait()
            try:
                outcomes.append(roll_back(session, job_id=job_id, request=watchdog_request(205, expected_attempt=0)))
            except Conflict as exc:
                outcomes.append(exc)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(isinstance(o, Conflict) for o in outcomes) == 1
    with sessions() as session:
        assert [a.number for a in jobs.repo.get_job(session, job_id=job_id).attempts] == [0, 1]


def test_too_many_rollbacks_in_the_window_pause_the_job_for_a_person(running_job):
    sessions, job_id = running_job
    with sessions() as session:
        roll_back(session, job_id=job_id, request=watchdog_request(205))
        ingest.record_checkpoint(session, job_id=job_id, attempt=1, step=200, tokens=1, path="/x", manifest_sha256="f" * 64, actor="t")
        roll_back(session, job_id=job_id, request=watchdog_request(250))
        third = roll_back(session, job_id=job_id, request=watchdog_request(290))
        job = jobs.repo.get_job(session, job_id=job_id)
        kinds = [e.kind for e in jobs.repo.job_events(session, job_id=job_id, kind="job.needs_attention")]
    assert third.paused and third.attempt is None
    assert job.desired_state == "paused" and len(job.attempts) == 3
    assert kinds == ["job.needs_attention"]


def test_no_checkpoint_early_enough_is_a_conflict(running_job):
    sessions, job_id = running_job
    with sessions() as session, pytest.raises(Conflict, match="no verified checkpoint"):
        roll_back(session, job_id=job_id, request=watchdog_request(45))


def test_oncall_rolls_back_through_the_api(app_client, tokens, tiny_spec, settings):
    job = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()
    with get_sessionmaker(settings.resolved_database_url)() as session:
        for step in (40, 80):
            ingest.record_checkpoint(session, job_id=job["id"], attempt=0, step=step, tokens=step, path=f"/c/{step}", manifest_sha256=f"{step:064x}", actor="t")
    body = {"reason": "zh channel garbage since step 70", "to_step": 60, "skip_steps": 25, "lr_scale": 0.5, "attempt": 0}

    refused = app_client.post(f"/v1/jobs/{job['id']}/rollback", json=body, headers=auth(tokens["alice"]))
    done = app_client.post(f"/v1/jobs/{job['id']}/rollback", json=body, headers=auth(tokens["oncall"]))
    again = app_client.post(f"/v1/jobs/{job['id']}/rollback", json=body, headers=auth(tokens["oncall"]))

    assert refused.status_code == 403
    assert done.status_code == 201, done.text
    result = done.json()
    assert result["checkpoint"]["step"] == 40 and result["skip_range"] == [40, 65] and result["attempt"] == 1
    assert result["job"]["attempts"][-1]["reason"] == "oncall" and result["job"]["attempts"][-1]["lr_scale"] == 0.5
    assert again.status_code == 409 and "another rollback" in again.json()["detail"]
    events = app_client.get(f"/v1/jobs/{job['id']}/events", headers=auth(tokens["viewer"])).json()["data"]
    rolled = next(e for e in events if e["kind"] == "job.rolled_back")
    assert rolled["actor"] == "oncall" and rolled["reason"] == body["reason"]


# --- a restart attempt does not stand in a rollback's way; only another rollback does ----------


def test_a_restart_opened_after_a_pod_failure_does_not_swallow_the_rollback_of_the_attempt_it_replaced(running_job):
    sessions, job_id = running_job
    with sessions() as session:
        # The trainer died on the bad data; the controller opened a restart before the verdict came.
        job = jobs.repo.get_job(session, job_id=job_id, for_update=True)
        attempts.open_attempt(
            session, job=job, reason=AttemptReason.POD_FAILURE, actor="controller", why="evicted",
            resume_from=checkpoints.choose(session, job_id=job_id),
        )  # fmt: skip
        session.commit()

        outcome = roll_back(session, job_id=job_id, request=watchdog_request(205, expected_attempt=0))

        job = jobs.repo.get_job(session, job_id=job_id)
    assert outcome.attempt == 2 and outcome.skip_range == [160, 235]
    assert [(a.reason, a.state) for a in job.attempts] == [
        ("launch", "superseded"), ("pod_failure", "superseded"), ("rollback", "pending"),
    ]  # fmt: skip
    assert job.attempts[-1].lr_scale == 0.5


# --- racing rollbacks: one wins, the others get 409, on Postgres and SQLite --------------------


def test_rollbacks_racing_from_the_api_and_the_watchdog_have_one_winner_and_no_500(
    app_client, tokens, tiny_spec, settings
):
    # SQLite: each must hold the write lock before it reads the attempt it decides on. Postgres:
    # the watchdog's verdict event (a key-share lock on the job row, through its foreign key)
    # must not deadlock with a rollback locking the row.
    tiny_spec["checkpoint"]["keep_last"] = 10
    job_id = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()["id"]
    sessions = get_sessionmaker(settings.resolved_database_url)
    with sessions() as session:
        for step in (40, 80, 120):
            ingest.record_checkpoint(session, job_id=job_id, attempt=0, step=step, tokens=step, path=f"/c/{step}", manifest_sha256=f"{step:064x}", actor="t")
    contenders = 8
    barrier = threading.Barrier(contenders)
    statuses: list[int] = []
    watchdog_wins: list[int | None] = []
    errors: list[BaseException] = []

    def oncall() -> None:
        body = {"reason": "garbage in zh", "to_step": 100, "attempt": 0}  # what each one saw
        barrier.wait()
        statuses.append(app_client.post(f"/v1/jobs/{job_id}/rollback", json=body, headers=auth(tokens["oncall"])).status_code)

    def watchdog() -> None:
        verdict = Verdict(job=str(job_id), attempt=0, step=130, kind="divergence", action="rollback", channel="zh", evidence={"onset": 125})
        dog = Watchdog(sessions)
        barrier.wait()
        try:
            with sessions() as session:
                watchdog_wins.append(dog._act(session, verdict))
                session.commit()
        except BaseException as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=oncall) for _ in range(contenders // 2)]
    threads += [threading.Thread(target=watchdog) for _ in range(contenders // 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert set(statuses) <= {201, 409}, statuses
    winners = statuses.count(201) + sum(1 for won in watchdog_wins if won == job_id)
    assert winners == 1, (statuses, watchdog_wins)
    with sessions() as session:
        assert [a.number for a in jobs.repo.get_job(session, job_id=job_id).attempts] == [0, 1]
