"""Faults on the cluster path: the controller against the Kubernetes emulator over real HTTP, on
real Postgres, with the kill, the pod failure or the bad checkpoint injected where it hurts.

- a controller killed after each request it makes while starting an attempt: after a restart,
  one PyTorchJob, owning a Secret whose token the database accepts (until the attempt ends);
- the trainer's outcome lines in the pods' termination messages decide: a divergence rolls back
  even when torchrun's clean-up made the other pods exit 143 (SIGTERM);
- a pod failure that opened a restart attempt does not swallow the watchdog's rollback of the
  attempt it replaced: the rollback supersedes the restart, with its skip range and LR scale;
- with the checkpoint volume mounted in the service, a damaged resume checkpoint is passed over;
- a paused attempt ends (and its token goes) only once its pods are gone: a foreground deletion
  keeps the PyTorchJob while its trainer saves on SIGTERM and registers that checkpoint.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import pytest

from service import attempts, jobs
from service.db import repo
from service.db.models import Checkpoint, Job, Role
from service.db.session import get_sessionmaker
from service.settings import Settings
from service.tokens import Principal, authenticate
from service.watchdog.consumer import Watchdog
from service.watchdog.detector import Verdict
from tests.service.checkpoint_dirs import save_and_register
from tests.service.controller.k8s_emulator import EmulatorHandle
from tests.service.controller.on_cluster import (
    ALICE,
    NAMESPACE,
    Killed,
    cluster_settings,
    make_controller,
    name_of,
    stored,
)


@pytest.fixture
def settings(pg_url, tmp_path) -> Settings:
    return cluster_settings(pg_url, tmp_path)


@pytest.fixture
def job(settings, tiny_spec) -> Job:
    tiny_spec["watchdog"].update(rollback_margin_steps=5, skip_steps_after=5, lr_scale_on_rollback=0.5)
    tiny_spec["checkpoint"]["keep_last"] = 10
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return jobs.submit_job(session, raw=tiny_spec, principal=ALICE, settings=settings)


def secret_token(k8s: EmulatorHandle, job: Job, attempt: int) -> str:
    secret = k8s.get("secrets", f"{name_of(job, attempt)}-token")
    return base64.b64decode(secret["data"]["token"]).decode()


def accepted(settings: Settings, token: str) -> Principal | None:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return authenticate(session, token=token, admin_token_hash=None)


def register(settings: Settings, job: Job, attempt: int, steps) -> None:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        for step in steps:
            save_and_register(session, Path(settings.state_dir) / "volume" / f"{job.name}-{job.id}", job_id=job.id, attempt=attempt, step=step)


# --- fault 1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kill_after", range(9))
def test_a_controller_killed_after_any_request_while_starting_leaves_one_workload_holding_an_accepted_token(
    settings, cluster, job, kill_after
):
    _, k8s = cluster
    with contextlib.suppress(Killed):  # no kill if it was done before its Nth request
        make_controller(settings, cluster, kill_after=kill_after).reconcile(job.id)
    for _ in range(2):  # restarted, and restarted again
        make_controller(settings, cluster).reconcile(job.id)

    assert k8s.names("pytorchjobs") == {name_of(job, 0)}
    assert k8s.count("create", "pytorchjobs") == 1
    uid = k8s.get("pytorchjobs", name_of(job, 0))["metadata"]["uid"]
    for plural, suffix in (("configmaps", "-config"), ("secrets", "-token")):
        owners = k8s.get(plural, name_of(job, 0) + suffix)["metadata"]["ownerReferences"]
        assert [owner["uid"] for owner in owners] == [uid]
    principal = accepted(settings, secret_token(k8s, job, 0))
    assert principal is not None, "the workload's token is not one the database accepts"
    assert (principal.job_id, principal.attempt) == (job.id, 0)

    k8s.transition(name_of(job, 0), "Succeeded")
    make_controller(settings, cluster).reconcile(job.id)
    assert stored(settings, job.id).state == "succeeded"
    assert accepted(settings, secret_token(k8s, job, 0)) is None, "an ended attempt's token is revoked"


# --- fault 9 ---------------------------------------------------------------------------------


def lines(*outcomes: dict) -> str:
    return "".join(json.dumps(o) + "\n" for o in outcomes)


def test_a_divergence_in_the_pods_termination_messages_rolls_back_though_other_pods_exited_143(
    settings, cluster, job
):
    _, k8s = cluster
    controller = make_controller(settings, cluster)
    controller.reconcile(job.id)
    k8s.transition(name_of(job, 0), "Running")
    controller.reconcile(job.id)
    register(settings, job, 0, (10, 20, 30))
    pytorchjob = k8s.get("pytorchjobs", name_of(job, 0))
    diverged = {"outcome": "diverged", "rank": 0, "step": 33, "message": "loss is NaN at steps 33-35", "checkpoint": None}
    k8s.add_pod(pytorchjob, role="master", terminated_reason="Error", exit_code=1, terminated_message=lines(diverged))
    stopped = {"outcome": "preempted", "rank": 2, "step": 35, "message": "SIGTERM", "checkpoint": None}
    k8s.add_pod(pytorchjob, role="worker", terminated_reason="Error", exit_code=143, terminated_message=lines(stopped))
    k8s.transition(name_of(job, 0), "Failed", message=f"PyTorchJob {NAMESPACE}/{name_of(job, 0)} has failed because 1 Master replica(s) failed.")

    controller.reconcile(job.id)
    controller.reconcile(job.id)

    after = stored(settings, job.id)
    first, second = after.attempts
    assert (first.state, first.outcome) == ("failed", "diverged")
    assert (second.reason, second.skip_ranges, second.lr_scale) == ("rollback", [[20, 38]], 0.5)
    assert k8s.names("pytorchjobs") == {name_of(job, 1)}
    config = json.loads(k8s.get("configmaps", f"{name_of(job, 1)}-config")["data"]["trainer.json"])
    assert config["data"]["skip_ranges"] == [[20, 38]]
    assert config["checkpoint"]["resume_from"].endswith("step-00000020")


# --- fault 3 ---------------------------------------------------------------------------------


def test_a_pod_failure_does_not_swallow_the_rollback_of_the_attempt_it_replaced(settings, cluster, job):
    _, k8s = cluster
    controller = make_controller(settings, cluster)
    controller.reconcile(job.id)
    k8s.transition(name_of(job, 0), "Running")
    controller.reconcile(job.id)
    register(settings, job, 0, (10, 20, 30, 40))
    # The trainer dies on the bad data (no outcome line), the pod is evicted: a restart attempt
    # (a preemption, as evictions are).
    k8s.transition(name_of(job, 0), "Failed", reason="Evicted", message="The node was low on resource: memory.")
    controller.reconcile(job.id)
    controller.reconcile(job.id)
    assert [(a.number, a.reason) for a in stored(settings, job.id).attempts] == [(0, "launch"), (1, "preempted")]

    # The watchdog's verdict on attempt 0's divergence arrives now.
    watchdog = Watchdog(get_sessionmaker(settings.resolved_database_url))
    verdict = Verdict(job=str(job.id), attempt=0, step=44, kind="divergence", action="rollback", channel="zh", evidence={"onset": 41})
    with get_sessionmaker(settings.resolved_database_url)() as session:
        assert watchdog._act(session, verdict) == job.id
        session.commit()
    controller.reconcile(job.id)
    controller.reconcile(job.id)

    after = stored(settings, job.id)
    assert [(a.number, a.reason, a.state) for a in after.attempts] == [
        (0, "launch", "superseded"),
        (1, "preempted", "superseded"),
        (2, "rollback", "pending"),
    ]
    rollback = after.attempts[-1]
    assert (rollback.skip_ranges, rollback.lr_scale) == ([[30, 46]], 0.5)
    assert k8s.names("pytorchjobs") == {name_of(job, 2)}
    with get_sessionmaker(settings.resolved_database_url)() as session:
        assert [e.kind for e in repo.job_events(session, job_id=job.id, kind="rollback.skipped")] == []


# --- fault 2 ---------------------------------------------------------------------------------


def test_with_the_volume_mounted_a_damaged_resume_checkpoint_is_passed_over(settings, cluster, job):
    _, k8s = cluster
    settings.checkpoint_mount = str(Path(settings.state_dir) / "volume")
    settings.checkpoint_root = "/checkpoints"
    controller = make_controller(settings, cluster)
    controller.reconcile(job.id)
    k8s.transition(name_of(job, 0), "Running")
    controller.reconcile(job.id)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        for step in (10, 20, 30):
            checkpoint = save_and_register(
                session, Path(settings.checkpoint_mount) / f"{job.name}-{job.id}", job_id=job.id, attempt=0, step=step
            )
            # Registered as the pods see it: under checkpoint_root.
            checkpoint.path = f"/checkpoints/{job.name}-{job.id}/step-{step:08d}"
        session.commit()
    newest = Path(settings.checkpoint_mount) / f"{job.name}-{job.id}" / "step-00000030"
    (newest / "trainer_state.pt").unlink()
    k8s.transition(name_of(job, 0), "Failed", reason="Evicted", message="The node was low on resource: memory.")

    controller.reconcile(job.id)
    controller.reconcile(job.id)

    config = json.loads(k8s.get("configmaps", f"{name_of(job, 1)}-config")["data"]["trainer.json"])
    assert config["checkpoint"]["resume_from"] == f"/checkpoints/{job.name}-{job.id}/step-00000020"
    with get_sessionmaker(settings.resolved_database_url)() as session:
        opened = repo.job_events(session, job_id=job.id, kind="attempt.opened")[-1]
        by_step = {c.step: c for c in repo.list_checkpoints(session, job_id=job.id)}
    assert "passed over step 30 (corrupt: " in opened.reason and "trainer_state.pt is missing" in opened.reason
    assert by_step[30].usable is False and by_step[30].unusable_reason.startswith("corrupt")


# --- fault 8 ---------------------------------------------------------------------------------


def test_a_job_that_cannot_be_rendered_at_launch_fails_with_its_attempt_instead_of_pending_forever(
    settings, cluster, tiny_spec
):
    _, k8s = cluster
    # Stored without the submit-time render (as a job stored before it was checked would be).
    tiny_spec["parallelism"].update(tensor=2, sequence_parallel=True)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)

    for _ in range(2):
        make_controller(settings, cluster).reconcile(job.id)

    failed = stored(settings, job.id)
    assert failed.state == "failed" and "sequence_parallel" in failed.state_reason
    assert [(a.state, "cannot render" in a.state_reason) for a in failed.attempts] == [("failed", True)]
    assert k8s.names("pytorchjobs") == set() and k8s.names("secrets") == set()
    with get_sessionmaker(settings.resolved_database_url)() as session:
        kinds = [e.kind for e in repo.list_events(session, job_id=job.id, limit=100).items]
        assert repo.active_job_tokens(session, job_id=job.id) == []
    assert kinds[-2:] == ["attempt.failed", "job.failed"]


# --- fault 10: an attempt ends when its pods are gone ------------------------------------------


def test_a_paused_attempt_ends_only_once_its_pods_are_gone_so_its_sigterm_checkpoint_counts(
    settings, cluster, job
):
    _, k8s = cluster
    controller = make_controller(settings, cluster)
    controller.reconcile(job.id)
    k8s.transition(name_of(job, 0), "Running")
    k8s.hold_dependents("pytorchjobs", name_of(job, 0))  # its pod runs
    controller.reconcile(job.id)
    token = secret_token(k8s, job, 0)
    register(settings, job, 0, (10,))
    with get_sessionmaker(settings.resolved_database_url)() as session:
        attempts.pause_job(session, job_id=job.id, principal=Principal(name="oncall", role=Role.ONCALL), reason="look")

    for _ in range(2):
        controller.reconcile(job.id)

    # Deleted (in the foreground): its pod got SIGTERM and is saving; the attempt still runs.
    assert k8s.get("pytorchjobs", name_of(job, 0))["metadata"].get("deletionTimestamp")
    assert stored(settings, job.id).attempts[0].state == "running"
    assert accepted(settings, token) is not None
    register(settings, job, 0, (13,))  # the save on SIGTERM, with that token

    k8s.release_dependents("pytorchjobs", name_of(job, 0))  # the pod is gone
    controller.reconcile(job.id)

    paused = stored(settings, job.id)
    assert (paused.state, paused.attempts[0].state) == ("paused", "cancelled")
    assert accepted(settings, token) is None
    with get_sessionmaker(settings.resolved_database_url)() as session:
        resumed = attempts.resume_job(session, job_id=job.id, principal=Principal(name="oncall", role=Role.ONCALL), reason="go on")
        assert session.get(Checkpoint, resumed.attempts[-1].resume_from_checkpoint_id).step == 13
