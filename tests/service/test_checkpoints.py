"""The checkpoint registry tells the truth: one retention rule, answered to the trainer as a
prune list, and a verifier that agrees with the trainer's own manifests.

Retention (on Postgres and SQLite, through the API): the newest `keep_last` usable checkpoints
stay; a rollback's target and every attempt's resume point are never pruned; checkpoints a
rollback went past, or whose attempt was superseded, are handed over for deletion once; a
retried registration is answered with the same list.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service import checkpoints, evaluations, ingest, jobs
from service.checkpoints import CheckpointStorage, manifest_problem
from service.db import repo
from service.db.models import AttemptReason, Role, WatchdogState
from service.db.session import get_sessionmaker
from service.errors import Conflict
from service.settings import Settings
from service.tokens import Principal, mint_token
from service.watchdog.rollback import RollbackRequest, roll_back
from tests.conftest import ADMIN_TOKEN, auth
from tests.service.checkpoint_dirs import write_checkpoint

ALICE = Principal(name="alice", role=Role.SUBMITTER)


@pytest.fixture
def job_and_token(app_client, tokens, tiny_spec, settings):
    """A submitted job keeping 3 checkpoints, and its attempt 0's ingest token."""
    tiny_spec["checkpoint"]["keep_last"] = 3
    tiny_spec["watchdog"].update(rollback_margin_steps=0, skip_steps_after=10)
    job = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()
    with get_sessionmaker(settings.resolved_database_url)() as session:
        _, token = mint_token(session, name="job-a0", role=Role.VIEWER, created_by="test", job_id=job["id"], attempt=0)
    return job["id"], token


def report(app_client, job_id: int, attempt: int, step: int, sha: str | None = None) -> dict:
    """A trainer's report of a checkpoint in its job's directory (nothing is written there)."""
    directory = checkpoints.job_directory(job_id, "tiny-cpu", app_client.app.state.settings)
    path = f"{directory}/step-{step:08d}"
    return {"attempt": attempt, "step": step, "tokens": step, "path": path, "manifest_sha256": sha or f"{attempt:02x}{step:062x}"}


def register(app_client, job_id: int, token: str, attempt: int, step: int):
    response = app_client.post(f"/v1/jobs/{job_id}/checkpoints", json=report(app_client, job_id, attempt, step), headers=auth(token))
    assert response.status_code in (200, 201), response.text
    return response.json()


def pruned_steps(answer: dict) -> list[tuple[int, int]]:
    return [(p["attempt"], p["step"]) for p in answer["prune"]]


def test_registration_answers_what_to_delete_beyond_keep_last_and_a_retry_gets_the_same(app_client, job_and_token):
    job_id, token = job_and_token
    answers = [register(app_client, job_id, token, 0, step) for step in (10, 20, 30, 40, 50)]

    assert [pruned_steps(a) for a in answers] == [[], [], [], [(0, 10)], [(0, 20)]]
    first = answers[3]["prune"][0]
    assert first == {key: report(app_client, job_id, 0, 10)[key] for key in ("path", "step", "attempt", "manifest_sha256")}
    retried = app_client.post(f"/v1/jobs/{job_id}/checkpoints", json=report(app_client, job_id, 0, 40), headers=auth(token))
    assert retried.status_code == 200 and pruned_steps(retried.json()) == [(0, 10)]
    listed = app_client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth(ADMIN_TOKEN)).json()
    assert [(c["step"], c["usable"], c["unusable_reason"]) for c in listed] == [
        (10, False, "pruned: keep_last 3"),
        (20, False, "pruned: keep_last 3"),
        (30, True, None),
        (40, True, None),
        (50, True, None),
    ]


def rolled_back_at_step_20(app_client, job_and_token, settings) -> tuple[int, str]:
    """Attempt 0 registered 10-40 and was rolled back for a spike at 20: the job and attempt 1's token."""
    job_id, token = job_and_token
    for step in (10, 20, 30, 40):
        register(app_client, job_id, token, 0, step)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        roll_back(
            session,
            job_id=job_id,
            request=RollbackRequest(onset_step=20, reason=AttemptReason.ROLLBACK, why="spike", actor="watchdog", expected_attempt=0),
        )
        _, token1 = mint_token(session, name="job-a1", role=Role.VIEWER, created_by="test", job_id=job_id, attempt=1)
    return job_id, token1


def test_a_rollback_target_is_never_pruned_and_what_it_went_past_is_handed_over_once(app_client, job_and_token, settings):
    job_id, token1 = rolled_back_at_step_20(app_client, job_and_token, settings)

    answers = [register(app_client, job_id, token1, 1, step) for step in (30, 40, 50, 60)]

    # Attempt 0's 40 was rolled back past: handed over with attempt 1's first registration (its
    # 30 was written over by attempt 1's at the same path: nothing of it is left to delete).
    # Then keep_last 3 (attempt 0's 10 went when its 40 came): attempt 1's 30, never 20, which
    # attempt 1 resumed from.
    assert [pruned_steps(a) for a in answers] == [[(0, 40)], [], [], [(1, 30)]]
    listed = {(c["attempt"], c["step"]): c for c in app_client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth(ADMIN_TOKEN)).json()}
    target = listed[(0, 20)]
    assert target["usable"] is True and target["pruned_at"] is None  # pinned: attempt 1 resumes from it
    assert listed[(0, 40)]["unusable_reason"].startswith(("rolled back past", "overwritten"))
    assert [(a, s) for (a, s), c in listed.items() if c["usable"]] == [(0, 20), (1, 40), (1, 50), (1, 60)]


def test_checkpoints_rolled_back_past_are_handed_to_the_next_registration(app_client, job_and_token, settings):
    job_id, token1 = rolled_back_at_step_20(app_client, job_and_token, settings)

    first = register(app_client, job_id, token1, 1, 25)
    second = register(app_client, job_id, token1, 1, 35)

    assert pruned_steps(first) == [(0, 30), (0, 40)]
    assert pruned_steps(second) == []


def test_a_superseded_attempts_checkpoint_is_stored_unusable_with_nothing_to_delete(session, tiny_spec):
    tiny_spec["checkpoint"]["keep_last"] = 1
    job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
    for step in (10, 20):
        ingest.record_checkpoint(session, job_id=job.id, attempt=0, step=step, tokens=step, path=f"/c/{step}", manifest_sha256=f"{step:064x}", actor="t")
    roll_back(session, job_id=job.id, request=RollbackRequest(onset_step=30, reason=AttemptReason.ONCALL, why="x", actor="oncall", to_step=20))

    late = ingest.record_checkpoint(session, job_id=job.id, attempt=0, step=25, tokens=25, path="/c/25", manifest_sha256="e" * 64, actor="t")

    assert late.created and late.prune == []
    assert late.checkpoint.usable is False and late.checkpoint.unusable_reason.startswith("superseded")


def test_a_finished_job_registers_nothing(session, tiny_spec):
    job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
    jobs.cancel_job(session, job_id=job.id, principal=ALICE, reason="done")
    with pytest.raises(Conflict, match="already cancelled"):
        ingest.record_checkpoint(session, job_id=job.id, attempt=0, step=10, tokens=1, path="/c/10", manifest_sha256="a" * 64, actor="t")


# --- the verifier agrees with the trainer ------------------------------------------------------


def trainer_checkpoint(folder: Path, *, step: int) -> str:
    """A checkpoint directory sealed by the trainer's own `write_manifest`; its registered sha256."""
    from trainer.checkpoint import write_manifest

    (folder / "model").mkdir(parents=True)
    (folder / "model" / "__0_0.distcp").write_bytes(b"weights" * 100)
    (folder / "trainer_state.pt").write_bytes(b"counters")
    return write_manifest(folder, step=step, tokens=step * 10, attempt=2).sha256()


def test_the_service_verifier_accepts_what_the_trainer_sealed_and_refuses_each_damage(tmp_path):
    folder = tmp_path / "step-00000040"
    sha = trainer_checkpoint(folder, step=40)
    assert manifest_problem(folder, sha) is None
    # The test helper writes manifests as the trainer does.
    assert manifest_problem(tmp_path / "helper", None) is not None
    (tmp_path / "helper").mkdir()
    assert manifest_problem(tmp_path / "helper", write_checkpoint(tmp_path / "helper", step=1, attempt=0)) is None

    assert "sha256" in manifest_problem(folder, "0" * 64)
    (folder / "trainer_state.pt").write_bytes(b"counter")  # truncated by a byte
    assert "is 7 bytes, its manifest says 8" in manifest_problem(folder, sha)
    (folder / "trainer_state.pt").unlink()
    assert "trainer_state.pt is missing" in manifest_problem(folder, sha)
    (folder / "manifest.json").unlink()
    assert "has no manifest.json" in manifest_problem(folder, sha)
    shutil.rmtree(folder)
    assert manifest_problem(folder, sha).startswith("missing")


def test_the_storage_maps_trainer_paths_onto_the_mount_and_judges_only_its_own(tmp_path):
    storage = CheckpointStorage.from_settings(Settings(backend="kubernetes", checkpoint_mount=str(tmp_path)))
    assert storage.local_path("/checkpoints/job-1/step-00000010") == tmp_path / "job-1" / "step-00000010"
    assert storage.local_path("/elsewhere/step-00000010") is None
    assert storage.local_path("/checkpoints/../etc") is None
    assert CheckpointStorage.from_settings(Settings(backend="kubernetes")) is None  # not mounted
    local = CheckpointStorage.from_settings(Settings(state_dir=tmp_path))
    assert local.local_root == Path(Settings(state_dir=tmp_path).checkpoint_root)


def test_a_rollback_that_can_read_the_volume_passes_over_a_damaged_checkpoint_and_says_so(session, tiny_spec, tmp_path):
    tiny_spec["watchdog"].update(rollback_margin_steps=0)
    job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
    storage = CheckpointStorage.from_settings(Settings(state_dir=tmp_path))
    directory = storage.local_root / f"{job.name}-{job.id}"
    for step in (10, 20, 30):
        folder = directory / f"step-{step:08d}"
        folder.mkdir(parents=True)
        sha = write_checkpoint(folder, step=step, attempt=0)
        ingest.record_checkpoint(session, job_id=job.id, attempt=0, step=step, tokens=step, path=str(folder), manifest_sha256=sha, actor="t")
    manifest = json.loads((directory / "step-00000030" / "manifest.json").read_text())
    manifest["tokens"] += 1
    (directory / "step-00000030" / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(directory / "step-00000020")

    outcome = roll_back(
        session,
        job_id=job.id,
        request=RollbackRequest(onset_step=35, reason=AttemptReason.ROLLBACK, why="spike", actor="watchdog", expected_attempt=0),
        storage=storage,
    )

    assert outcome.checkpoint.step == 10
    (event,) = repo.job_events(session, job_id=job.id, kind="job.rolled_back")
    assert [(p["step"], p["reason"].split(":")[0]) for p in event.data["passed_over"]] == [(30, "corrupt"), (20, "missing")]
    assert "passed over step 30 (corrupt" in event.reason
    by_step = {c.step: c for c in repo.list_checkpoints(session, job_id=job.id)}
    assert [by_step[s].usable for s in (10, 20, 30)] == [True, False, False]


def test_choose_without_storage_takes_the_registrys_word(session, tiny_spec):
    job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
    ingest.record_checkpoint(session, job_id=job.id, attempt=0, step=10, tokens=1, path="/nowhere/10", manifest_sha256="a" * 64, actor="t")
    assert checkpoints.choose(session, job_id=job.id).step == 10


def test_a_watchdog_behind_the_trainer_keeps_the_checkpoint_its_next_rollback_would_need(app_client, job_and_token, settings):
    job_id, token = job_and_token  # keep_last 3, rollback margin 0, recover window 10
    sessions = get_sessionmaker(settings.resolved_database_url)
    with sessions() as session:  # the watchdog has judged attempt 0 up to step 35 (and Postgres then went away)
        session.add(WatchdogState(name=f"default/job/{job_id}", state={"detector": {}, "mark": [0, 35, ["stable"]]}))
        session.commit()
    answers = [register(app_client, job_id, token, 0, step) for step in (10, 20, 30, 40, 50, 60, 70)]

    # An episode open at step 35 began at 25 at the earliest: checkpoint 20 stays until it is judged.
    assert [pruned_steps(a) for a in answers] == [[], [], [], [], [(0, 10)], [(0, 30)], [(0, 40)]]
    with sessions() as session:
        assert {c.step for c in repo.list_checkpoints(session, job_id=job_id) if c.usable} == {20, 50, 60, 70}
        assert checkpoints.choose(session, job_id=job_id, before_step=26).step == 20

    with sessions() as session:  # it caught up: 20 is no longer needed and goes with the next one
        row = session.get(WatchdogState, f"default/job/{job_id}")
        row.state = {"detector": {}, "mark": [0, 69, ["stable"]]}
        session.commit()
    assert pruned_steps(register(app_client, job_id, token, 0, 80)) == [(0, 20)]


def test_a_watchdog_gone_before_any_checkpoint_keeps_the_oldest_for_the_rollback_it_owes(app_client, job_and_token, settings):
    job_id, token = job_and_token  # keep_last 3, rollback margin 0, recover window 10
    sessions = get_sessionmaker(settings.resolved_database_url)
    with sessions() as session:  # judged up to step 8 only: an episode there began before any checkpoint
        session.add(WatchdogState(name=f"default/job/{job_id}", state={"detector": {}, "mark": [0, 8, ["stable"]]}))
        session.commit()
    answers = [register(app_client, job_id, token, 0, step) for step in (10, 20, 30, 40, 50, 60)]

    assert [pruned_steps(a) for a in answers] == [[], [], [], [], [(0, 20)], [(0, 30)]]
    with sessions() as session:
        assert {c.step for c in repo.list_checkpoints(session, job_id=job_id) if c.usable} == {10, 40, 50, 60}
        assert checkpoints.choose(session, job_id=job_id, before_step=26).step == 10


def test_a_checkpoint_a_benchmark_will_score_or_scores_is_kept_until_its_evaluation_ends(session, tiny_spec):
    tiny_spec["checkpoint"] = {"interval_steps": 10, "keep_last": 1}
    tiny_spec["evaluation"] = {"benchmarks": [{"task": "en", "path": "b/en.jsonl"}], "checkpoints": {"every": 2}}
    job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)

    def save(step: int) -> list[int]:
        saved = ingest.record_checkpoint(
            session, job_id=job.id, attempt=0, step=step, tokens=step, path=f"/c/{step}", manifest_sha256=f"{step:064x}", actor="t"
        )
        return [c.step for c in saved.prune]

    # Steps 20 and 40 are chosen (every 2nd at interval 10) but not yet scheduled: kept; 10, 30 go.
    assert [save(step) for step in (10, 20, 30, 40)] == [[], [], [10], []]
    rows = evaluations.schedule(session, repo.get_job(session, job_id=job.id))
    assert sorted({row.step for row in rows}) == [20, 40]
    evaluations.mark_running([row for row in rows if row.step == 20])
    assert save(50) == [30]  # 20 is being scored and 40 waits: both kept
    evaluations.record_results(
        session, job_id=job.id, step=20, actor="evaluation",
        results=[{"task": "en", "acc": 0.5, "acc_stderr": None, "acc_norm": 0.5, "acc_norm_stderr": None, "nll": 1.0, "samples": 8, "num_fewshot": 0}],
    )  # fmt: skip
    assert save(60) == [20]  # scored: now it goes; 40 still waits
