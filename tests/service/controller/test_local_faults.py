"""Faults around the local backend, with real processes: a stand-in trainer (fake_trainer/) that
behaves at its edges as the trainer does (starts, reports it runs, writes its outcome lines,
exits), run by the real controller and launcher, on Postgres and SQLite.

- a controller killed anywhere while starting an attempt: one trainer, holding a token the
  database accepts (and revoked once the attempt ends);
- the trainer's own outcome decides what follows its end: diverged rolls back, preempted
  resumes without counting as a pod failure, corrupt_checkpoint falls back to an older
  checkpoint keeping skip ranges and LR scale, bad_config fails; without an outcome, torchrun's
  clean-up of the other workers is not taken for the cause;
- a resume checkpoint deleted or damaged on disk is never resumed from.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from service import jobs
from service.controller.backends import local
from service.controller.backends.local import LocalBackend
from service.controller.loop import Controller
from service.db import repo
from service.db.models import AttemptReason, Job, Role
from service.db.session import get_sessionmaker
from service.errors import Conflict
from service.settings import Settings
from service.tokens import Principal, authenticate
from service.watchdog.rollback import RollbackRequest, roll_back
from tests.conftest import EXAMPLES
from tests.service.checkpoint_dirs import save_and_register
from tests.service.controller.test_outcome import TORCHRUN_SUMMARY

ALICE = Principal(name="alice", role=Role.SUBMITTER)
FAKE_TRAINER = Path(__file__).parent / "fake_trainer"
DEADLINE_S = 90
FAKE_ENV = {"FAKE_TRAINER_PLAN"}  # the fake trainer's script: passed through as an operator would


class Killed(BaseException):
    """The controller dies here: nothing catches it, nothing after it runs or commits."""


class FakeTrainer:
    """What each attempt's stand-in trainer does (`plan`), and what the runs did (`runs`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.plan_path = folder / "plan.json"
        self.plan_path.write_text("{}")

    def plan(self, **attempts: dict) -> None:
        """`a0={...}`: attempt 0's lines, exit code, log, file to wait for."""
        self.plan_path.write_text(json.dumps({key.removeprefix("a"): value for key, value in attempts.items()}))

    def runs(self) -> list[dict]:
        log = self.folder / "runs.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def gate(self, name: str) -> str:
        return str(self.folder / name)

    def open(self, name: str) -> None:
        (self.folder / name).touch()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTrainer:
    folder = tmp_path / "fake"
    folder.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE_TRAINER), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_TRAINER_PLAN", str(folder / "plan.json"))
    return FakeTrainer(folder)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, state_dir=tmp_path / "state", max_pod_failure_retries=0)


@pytest.fixture
def workloads(settings: Settings) -> Iterator[Path]:
    root = settings.state_dir / "workloads"
    yield root
    for folder in [*root.glob("*-a*"), *root.glob(".deleted/*")]:
        local._signal_workload(folder, signal.SIGKILL)


def new_controller(settings: Settings, workloads: Path, backend: object | None = None) -> Controller:
    """A freshly started controller: nothing in memory from any before it."""
    return Controller(settings, backend or LocalBackend(workloads, passthrough_env=FAKE_ENV), get_sessionmaker(settings.resolved_database_url))


def submit(settings: Settings, **watchdog) -> Job:
    spec = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    spec["resources"]["gpus_per_node"] = 1  # one process: the stand-in runs without torchrun
    spec["checkpoint"] = {"interval_steps": 10, "keep_last": 10}
    spec["watchdog"].update(watchdog)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return jobs.submit_job(session, raw=spec, principal=ALICE)


def stored(settings: Settings, job_id: int) -> Job:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return repo.get_job(session, job_id=job_id)


def drive(controller: Controller, settings: Settings, job_id: int, until: Callable[[Job], bool], what: str) -> Job:
    """Reconcile until the stored job satisfies `until` (the stand-in's processes take a moment)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        controller.reconcile(job_id)
        job = stored(settings, job_id)
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} never {what}: {job.state}, "
                f"{[(a.number, a.reason, a.state, a.state_reason) for a in job.attempts]}"
            )
        time.sleep(0.1)


def checkpoint_dir(settings: Settings, job: Job) -> Path:
    return Path(settings.checkpoint_root) / f"{job.name}-{job.id}"


def kinds(settings: Settings, job_id: int) -> list[str]:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return [e.kind for e in repo.list_events(session, job_id=job_id, limit=1000).items]


def accepted(settings: Settings, token: str) -> Principal | None:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return authenticate(session, token=token, admin_token_hash=None)


# --- fault 1: a controller killed while starting an attempt ------------------------------------


class KilledAtCreate(LocalBackend):
    """The backend of a controller that dies just before, or just after, creating the workload."""

    def __init__(self, root: Path, *, after: bool) -> None:
        super().__init__(root, passthrough_env=FAKE_ENV)
        self.after = after

    def create(self, workload) -> bool:
        if not self.after:
            raise Killed
        super().create(workload)
        raise Killed


@pytest.mark.parametrize("kill_point", ["before_create", "between_start_and_note", "after_create"])
def test_a_controller_killed_anywhere_while_starting_an_attempt_leaves_one_trainer_holding_an_accepted_token(
    settings, workloads, fake, monkeypatch, kill_point
):
    fake.plan(a0={"wait_for": fake.gate("release")})
    job = submit(settings)
    if kill_point == "between_start_and_note":
        # The launcher is started; the controller dies before noting that it was.
        original = local._write_atomically

        def die_noting_the_launcher(path: Path, text: str) -> None:
            if path.name == local.LAUNCHER_PID_FILE:
                raise Killed
            original(path, text)

        monkeypatch.setattr(local, "_write_atomically", die_noting_the_launcher)
        dying = new_controller(settings, workloads)
    else:
        dying = new_controller(settings, workloads, KilledAtCreate(workloads, after=kill_point == "after_create"))

    with pytest.raises(Killed):
        dying.reconcile(job.id)
    monkeypatch.undo()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE_TRAINER), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_TRAINER_PLAN", str(fake.plan_path))

    restarted = new_controller(settings, workloads)
    drive(restarted, settings, job.id, lambda j: j.state == "running", "ran")
    # Whoever won the launcher's lock has started by now; a second launcher gives up.
    deadline = time.monotonic() + DEADLINE_S
    while not fake.runs() and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(3):  # restarted again, and again: still the one trainer
        new_controller(settings, workloads).reconcile(job.id)

    (run,) = fake.runs()
    principal = accepted(settings, run["token"])
    assert principal is not None, "the trainer's token is not one the database accepts"
    assert (principal.job_id, principal.attempt) == (job.id, 0)

    fake.open("release")
    done = drive(new_controller(settings, workloads), settings, job.id, lambda j: j.state == "succeeded", "succeeded")
    assert [(a.number, a.state, a.outcome) for a in done.attempts] == [(0, "succeeded", "completed")]
    assert len(fake.runs()) == 1
    assert accepted(settings, run["token"]) is None, "an ended attempt's token is revoked"


# --- fault 9: the trainer's outcome decides ----------------------------------------------------


def outcome_line(outcome: str, step: int | None = None, checkpoint: str | None = None, rank: int = 0) -> dict:
    return {"outcome": outcome, "rank": rank, "step": step, "message": f"{outcome} (test)", "checkpoint": checkpoint}


def test_the_trainer_gets_none_of_the_services_secrets(settings, workloads, fake, monkeypatch):
    """The service runs with its admin token, database URL and cloud credentials in its
    environment; the trainer it starts sees none of them, only what a trainer needs."""
    secrets = {
        "PRETRAIN_ADMIN_TOKEN": "admin-secret-0123456789abcdef",
        "PRETRAIN_DATABASE_URL": "postgresql://u:db-secret-4711@db/x",
        "PRETRAIN_REDIS_URL": "redis://:redis-secret-4711@redis:6379/0",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-4711",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    fake.plan(a0={"wait_for": fake.gate("release")})
    job = submit(settings)
    controller = new_controller(settings, workloads)
    try:
        drive(controller, settings, job.id, lambda _: bool(fake.runs()), "started its trainer")
    finally:
        fake.open("release")
    [run] = fake.runs()
    environ = run["environ"]

    assert not [name for name in environ if name.startswith("PRETRAIN_") or name in secrets]
    assert not [name for name, value in environ.items() if any(s in value for s in secrets.values())]
    assert {"PATH", "PYTHONPATH", "FAKE_TRAINER_PLAN"} <= set(environ)  # what it runs on, and the passthrough
    assert run["token"] and run["token"] not in environ.values()  # its job token: in its config file


def test_a_diverged_trainer_is_rolled_back_not_failed_and_a_later_watchdog_verdict_finds_it_done(
    settings, workloads, fake
):
    job = submit(settings, rollback_margin_steps=5, skip_steps_after=5, lr_scale_on_rollback=0.5)
    fake.plan(
        a0={
            "lines": [outcome_line("diverged", step=35), outcome_line("crashed", step=36, rank=1)],
            "exit": 1,
            "wait_for": fake.gate("saved"),
        },
        a1={"wait_for": fake.gate("finish")},
    )
    controller = new_controller(settings, workloads)
    drive(controller, settings, job.id, lambda j: len(j.attempts) == 1 and j.state == "running", "ran")
    with get_sessionmaker(settings.resolved_database_url)() as session:
        for step in (10, 20, 30):
            save_and_register(session, checkpoint_dir(settings, job), job_id=job.id, attempt=0, step=step)
    fake.open("saved")

    rolled = drive(
        controller, settings, job.id, lambda j: len(j.attempts) == 2 and j.attempts[-1].state == "running", "rolled back"
    )

    first, second = rolled.attempts
    assert (first.state, first.outcome) == ("failed", "diverged")
    assert "diverged at step 35" in first.state_reason
    # The newest checkpoint 5 steps (the margin) before the onset; skipping 5 steps past it.
    assert (second.reason, second.skip_ranges, second.lr_scale) == ("rollback", [[30, 40]], 0.5)
    assert fake.runs()[1]["resume_from"].endswith("step-00000030")
    assert "job.rolled_back" in kinds(settings, job.id) and "job.failed" not in kinds(settings, job.id)
    with (
        get_sessionmaker(settings.resolved_database_url)() as session,
        pytest.raises(Conflict, match="another rollback"),
    ):
        # The watchdog's verdict on the same divergence, arriving after the trainer's word.
        roll_back(
            session,
            job_id=job.id,
            request=RollbackRequest(onset_step=34, reason=AttemptReason.ROLLBACK, why="divergence", actor="watchdog", expected_attempt=0),
        )
    fake.open("finish")
    drive(controller, settings, job.id, lambda j: j.state == "succeeded", "succeeded")


@pytest.mark.parametrize("why", ["alert_only", "no_checkpoint_early_enough"])
def test_a_diverged_trainer_that_cannot_be_rolled_back_pauses_for_a_person_and_never_fails(settings, workloads, fake, why):
    job = submit(settings, rollback="alert_only" if why == "alert_only" else "auto")
    fake.plan(a0={"lines": [outcome_line("diverged", step=3)], "exit": 3})

    done = drive(new_controller(settings, workloads), settings, job.id, lambda j: j.state == "paused", "paused")

    assert [(a.state, a.outcome) for a in done.attempts] == [("failed", "diverged")]
    assert "job.needs_attention" in kinds(settings, job.id) and "job.failed" not in kinds(settings, job.id)


def test_a_preempted_trainer_resumes_from_its_checkpoint_without_spending_the_retry_budget(
    settings, workloads, fake
):
    job = submit(settings)  # max_pod_failure_retries is 0: a pod failure would fail the job
    saved = str(checkpoint_dir(settings, job) / "step-00000020")
    fake.plan(
        a0={"lines": [outcome_line("preempted", step=20, checkpoint=saved)], "exit": 1, "wait_for": fake.gate("saved")},
        a1={},
    )
    controller = new_controller(settings, workloads)
    drive(controller, settings, job.id, lambda j: j.state == "running", "ran")
    with get_sessionmaker(settings.resolved_database_url)() as session:
        for step in (10, 20):
            save_and_register(session, checkpoint_dir(settings, job), job_id=job.id, attempt=0, step=step)
    fake.open("saved")

    done = drive(controller, settings, job.id, lambda j: j.state == "succeeded", "succeeded")

    assert [(a.reason, a.outcome) for a in done.attempts] == [("launch", "preempted"), ("preempted", "completed")]
    assert fake.runs()[1]["resume_from"] == saved


def test_a_refused_checkpoint_is_never_offered_again_and_the_next_attempt_keeps_skip_and_lr(
    settings, workloads, fake
):
    job = submit(settings, rollback_margin_steps=5, skip_steps_after=5, lr_scale_on_rollback=0.5)
    refused = str(checkpoint_dir(settings, job) / "step-00000030")
    fake.plan(
        a0={"lines": [outcome_line("diverged", step=37)], "exit": 3, "wait_for": fake.gate("saved")},
        a1={"lines": [outcome_line("corrupt_checkpoint", checkpoint=refused)], "exit": 4},
        a2={},
    )
    controller = new_controller(settings, workloads)
    drive(controller, settings, job.id, lambda j: j.state == "running", "ran")
    with get_sessionmaker(settings.resolved_database_url)() as session:
        for step in (10, 20, 30):
            save_and_register(session, checkpoint_dir(settings, job), job_id=job.id, attempt=0, step=step)
    fake.open("saved")

    done = drive(controller, settings, job.id, lambda j: j.state == "succeeded", "succeeded")

    rollback, restart = done.attempts[1:]
    assert (rollback.reason, rollback.outcome, rollback.skip_ranges) == ("rollback", "corrupt_checkpoint", [[30, 42]])
    assert (restart.reason, restart.skip_ranges, restart.lr_scale) == ("bad_checkpoint", [[30, 42]], 0.5)
    older = str(checkpoint_dir(settings, job) / "step-00000020")
    assert [run["resume_from"] for run in fake.runs()] == [None, refused, older]
    with get_sessionmaker(settings.resolved_database_url)() as session:
        by_step = {c.step: c for c in repo.list_checkpoints(session, job_id=job.id)}
    assert by_step[30].usable is False and "corrupt" in by_step[30].unusable_reason


def test_a_refused_checkpoint_with_no_intact_one_left_fails_the_job_saying_so(settings, workloads, fake):
    job = submit(settings)
    only = str(checkpoint_dir(settings, job) / "step-00000010")
    fake.plan(
        a0={"lines": [outcome_line("preempted", step=10, checkpoint=only)], "exit": 5, "wait_for": fake.gate("saved")},
        a1={"lines": [outcome_line("corrupt_checkpoint", checkpoint=only)], "exit": 4},
    )
    controller = new_controller(settings, workloads)
    drive(controller, settings, job.id, lambda j: j.state == "running", "ran")
    with get_sessionmaker(settings.resolved_database_url)() as session:
        save_and_register(session, checkpoint_dir(settings, job), job_id=job.id, attempt=0, step=10)
    fake.open("saved")

    done = drive(controller, settings, job.id, lambda j: j.state == "failed", "failed")

    assert "corrupt checkpoint" in done.state_reason and "no intact checkpoint is left" in done.state_reason
    assert len(done.attempts) == 2


def test_a_bad_config_fails_the_job_at_once(settings, workloads, fake):
    job = submit(settings)
    fake.plan(a0={"lines": [outcome_line("bad_config")], "exit": 2})
    settings.max_pod_failure_retries = 3  # it would be retried, were it a pod failure

    done = drive(new_controller(settings, workloads), settings, job.id, lambda j: j.state == "failed", "failed")

    assert [(a.state, a.outcome) for a in done.attempts] == [("failed", "bad_config")]
    assert "bad config" in done.state_reason


def test_without_an_outcome_the_worker_torchrun_stopped_is_not_taken_for_a_sigterm(settings, workloads, fake):
    # An older trainer, a missing checkpoint directory: rank 0 fails, torchrun stops rank 1.
    job = submit(settings)
    settings.max_pod_failure_retries = 3
    fake.plan(a0={"lines": [], "log": "FileNotFoundError: no checkpoint at /x\n" + TORCHRUN_SUMMARY, "exit": 1})

    done = drive(new_controller(settings, workloads), settings, job.id, lambda j: j.state == "failed", "failed")

    (attempt,) = done.attempts  # not retried three times on the same missing checkpoint
    assert "SIGTERM" not in attempt.state_reason and attempt.outcome is None
    assert "exited with code 1" in attempt.state_reason


# --- fault 2: a resume checkpoint gone bad on disk ---------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "truncated", "manifest_rewritten"])
def test_an_attempt_never_resumes_from_a_checkpoint_damaged_on_disk(settings, workloads, fake, damage):
    job = submit(settings, rollback_margin_steps=5, skip_steps_after=5)
    fake.plan(a0={"wait_for": fake.gate("never")}, a1={})
    controller = new_controller(settings, workloads)
    drive(controller, settings, job.id, lambda j: j.state == "running", "ran")
    with get_sessionmaker(settings.resolved_database_url)() as session:
        for step in (10, 20, 30):
            save_and_register(session, checkpoint_dir(settings, job), job_id=job.id, attempt=0, step=step)
        # A rollback where the checkpoint volume is not readable (the watchdog's): it takes 30.
        roll_back(
            session,
            job_id=job.id,
            request=RollbackRequest(onset_step=40, reason=AttemptReason.ROLLBACK, why="spike", actor="watchdog", expected_attempt=0),
        )
    target = checkpoint_dir(settings, job) / "step-00000030"
    if damage == "deleted":
        shutil.rmtree(target)
    elif damage == "truncated":
        (target / "model" / "shard_0_0.distcp").write_bytes(b"\0" * 10)
    else:
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["step"] = 31
        (target / "manifest.json").write_text(json.dumps(manifest))

    done = drive(controller, settings, job.id, lambda j: j.state == "succeeded", "succeeded")

    assert fake.runs()[-1]["resume_from"].endswith("step-00000020")
    assert done.attempts[-1].resume_from_checkpoint_id is not None
    assert "attempt.resume_changed" in kinds(settings, job.id)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        by_step = {c.step: c for c in repo.list_checkpoints(session, job_id=job.id)}
    assert by_step[30].usable is False
    assert by_step[30].unusable_reason.startswith("missing" if damage == "deleted" else "corrupt")


def test_a_superseded_trainer_slow_to_stop_is_deleted_once_while_it_saves(settings, workloads, fake):
    """Every reconcile while it saves on SIGTERM finds it there: it is asked to stop once, one
    `workload.deleted`, and left to finish. Its successor is created meanwhile, as on Kubernetes
    (kinds.py: Foreground deletion), which the chaos census allows for an attempt asked to stop."""
    job = submit(settings)
    fake.plan(a0={"wait_for": fake.gate("stopped"), "slow_to_stop": True}, a1={})
    controller = new_controller(settings, workloads)
    # running, and the stand-in is up (ignoring SIGTERM): on a loaded machine "running" comes first
    drive(controller, settings, job.id, lambda j: j.state == "running" and bool(fake.runs()), "ran")
    with get_sessionmaker(settings.resolved_database_url)() as session:
        save_and_register(session, checkpoint_dir(settings, job), job_id=job.id, attempt=0, step=10)
        roll_back(
            session,
            job_id=job.id,
            request=RollbackRequest(onset_step=30, reason=AttemptReason.ROLLBACK, why="spike", actor="watchdog", expected_attempt=0),
        )
    for _ in range(5):  # the trainer is saving: every look finds it still there
        controller.reconcile(job.id)
    assert kinds(settings, job.id).count("workload.deleted") == 1
    (old,) = workloads.glob(f"*-{job.id}-a0")  # not filed away: its trainer still runs
    assert (old / local.STOP_FILE).exists() and local._running(old)

    fake.open("stopped")
    drive(controller, settings, job.id, lambda j: j.state == "succeeded", "succeeded")
    assert [run["attempt"] for run in fake.runs()] == [0, 1]
    assert kinds(settings, job.id).count("workload.deleted") == 1


class FailsOnce(LocalBackend):
    """A backend whose first look fails as no backend error does (a bug, a database too busy)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, passthrough_env=FAKE_ENV)
        self.looks = 0

    def observe(self, job_id: int, *, kind: str = "pretrain"):
        self.looks += 1
        if self.looks == 1:
            raise RuntimeError("database is locked")
        return super().observe(job_id, kind=kind)


def test_a_reconcile_that_raises_is_tried_again_later_not_forgotten(settings, workloads, fake):
    job = submit(settings)
    controller = new_controller(settings, workloads, FailsOnce(workloads))
    controller.notify(job.id)

    assert controller.run_once() == 1  # nothing escapes the loop's pass

    assert job.id in controller._due  # looked at again, after a backoff


class DatabaseDown(Exception):
    """What a session raises while Postgres restarts."""


def test_a_poll_that_fails_is_asked_again_so_a_fresh_controller_still_finds_every_job(settings, workloads, fake):
    """Found by the chaos suite (seed 1010): a controller started while Postgres restarted failed
    its first poll, yet moved its mark past it; the jobs it had never seen stayed pending."""
    job = submit(settings)
    time.sleep(2.5)  # the job changed longer ago than the poll's allowance for clock skew
    controller = new_controller(settings, workloads)
    sessions = controller.sessions

    def down():
        raise DatabaseDown

    controller.sessions = down
    with pytest.raises(DatabaseDown):
        controller.run_once()
    controller.sessions = sessions

    assert controller.run_once() == 1, "the job is found by the next poll"
    assert job.id in controller._due, "and looked at again, as any job it reconciled"


def test_a_trainer_outliving_its_killed_launcher_still_runs_and_is_judged_by_its_own_word(settings, workloads, fake):
    job = submit(settings)  # no pod-failure retries: a trainer taken for vanished fails the job
    fake.plan(a0={"wait_for": fake.gate("go")})
    controller = new_controller(settings, workloads)
    drive(controller, settings, job.id, lambda j: j.state == "running", "ran")
    (folder,) = workloads.glob(f"*-{job.id}-a0")
    os.kill(int((folder / "pid").read_text()), signal.SIGKILL)  # the launcher alone, not its group

    controller.reconcile(job.id)
    assert stored(settings, job.id).state == "running"  # the trainer holds the lock: it runs
    fake.open("go")

    done = drive(controller, settings, job.id, lambda j: j.state == "succeeded", "succeeded")
    assert [(a.state, a.outcome) for a in done.attempts] == [("succeeded", "completed")]
    assert len(fake.runs()) == 1


# --- a workload slow to stop -------------------------------------------------------------------


def test_deleting_a_workload_still_stopping_again_is_not_another_deletion(tmp_path: Path):
    """Found by the chaos suite: every reconcile while a superseded trainer saved on SIGTERM
    recorded another `workload.deleted` (80-140 events a rollback)."""
    backend = LocalBackend(tmp_path / "workloads")
    folder = backend.root / "slow-7-a0"
    folder.mkdir()
    ignores_sigterm = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    local._launch(folder, {"job_id": 7, "attempt": 0, "name": folder.name}, [sys.executable, "-c", ignores_sigterm], {})
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not local._lock_held(folder) and time.monotonic() < deadline:
            time.sleep(0.05)

        assert backend.delete(7, 0) is True
        assert backend.delete(7, 0) is False
        assert 0 in backend.observe(7), "still stopping: it exists until its processes are gone"
        assert backend.delete(7, 1) is False
    finally:
        local._signal_workload(folder, signal.SIGKILL)


def test_a_trainer_deaf_to_sigterm_is_killed_after_the_grace_period_on_the_monotonic_clock(
    settings, workloads, fake
):
    job = submit(settings)
    fake.plan(a0={"wait_for": fake.gate("never"), "slow_to_stop": True})
    backend = LocalBackend(workloads, passthrough_env=FAKE_ENV)
    controller = new_controller(settings, workloads, backend)
    drive(controller, settings, job.id, lambda j: j.state == "running" and bool(fake.runs()), "ran")
    [folder] = workloads.glob(f"*-{job.id}-a0")
    assert backend.delete(job.id, 0) is True
    stamp = folder / local.STOP_FILE
    assert float(stamp.read_text()) <= time.monotonic()  # the machine's monotonic clock, not the wall's
    # A stamp this clock could not have written (an older version's wall-clock time, another boot)
    # restarts the grace period: the trainer saving its checkpoint is not killed for it.
    stamp.write_text(str(time.time()))
    assert backend.delete(job.id, 0) is False and local._running(folder)
    assert float(stamp.read_text()) <= time.monotonic()
    # Past the grace period (its workload's, sized by the plan) it is killed, and the workload is gone.
    stamp.write_text(str(time.monotonic() - 100_000))
    deadline = time.monotonic() + DEADLINE_S
    while not backend._finish_stopping(folder):
        assert time.monotonic() < deadline, "never killed"
        time.sleep(0.1)
    assert not folder.exists()
