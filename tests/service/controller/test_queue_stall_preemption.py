"""The controller's side of queues, preemptions and stalls, on a real database (SQLite and Postgres),
with a scripted backend at the edge: what it reports is what a cluster would (Kueue holding the
workload, a pod evicted, a run that stops stepping), and the job's states, attempts and events
follow.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from service import jobs
from service.controller.loop import Controller
from service.controller.reconcile import Phase, WorkloadStatus
from service.controller.stall import STEP_METRIC
from service.db import repo
from service.db.models import AttemptReason, Event, LatestMetric, MetricPoint, Role, utcnow
from service.db.session import get_sessionmaker
from service.tokens import Principal
from tests.conftest import auth
from tests.service.checkpoint_dirs import save_and_register

ALICE = Principal(name="alice", role=Role.SUBMITTER)
KUEUE_WAITS = "couldn't assign flavors to pod set master: insufficient quota for nvidia.com/gpu"


class ScriptedBackend:
    """Reports, per attempt, whatever the test says the cluster shows now."""

    def __init__(self) -> None:
        self.phases: dict[int, WorkloadStatus] = {}
        self.created: list[int] = []
        self.deleted: list[int] = []
        self.pods = [{"name": "trainer-master-0", "phase": "Running", "nccl_timeout": True}]

    def show(self, attempt: int, phase: Phase, reason: str | None = None, **more) -> None:
        self.phases[attempt] = WorkloadStatus(f"w-a{attempt}", attempt, phase, reason, **more)

    def observe(self, job_id: int, *, kind: str = "pretrain") -> dict[int, WorkloadStatus]:
        return dict(self.phases)

    def create(self, workload) -> bool:
        if workload.attempt in self.phases:
            return False
        self.created.append(workload.attempt)
        self.show(workload.attempt, Phase.PENDING)
        return True

    def delete(self, job_id: int, attempt: int, *, kind: str = "pretrain") -> bool:
        self.deleted.append(attempt)
        return self.phases.pop(attempt, None) is not None

    def pod_states(self, job_id: int, attempt: int, *, kind: str = "pretrain") -> list[dict]:
        return self.pods


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def controller(settings, backend) -> Controller:
    return Controller(settings, backend, get_sessionmaker(settings.resolved_database_url))


def submit(settings, spec: dict) -> int:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return jobs.submit_job(session, raw=spec, principal=ALICE, settings=settings).id


def stored(settings, job_id: int):
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = repo.get_job(session, job_id=job_id)
        events = [(e.kind, e.attempt, e.reason, e.data) for e in session.query(Event).filter_by(job_id=job_id).order_by(Event.id)]
        return job, events


def _pretrainctl(monkeypatch, app_client, token: str, *commands: list[str]) -> list[str]:
    """What `pretrainctl` prints for each command, talking to the app in-process."""
    from click.testing import CliRunner

    from pretrainctl import cli
    from pretrainctl.client import ApiClient

    def in_process(base_url: str, token: str | None, timeout: float = 30.0) -> ApiClient:
        client = ApiClient(base_url, token)
        client._http.close()
        client._http = app_client
        client.close = lambda: None  # the test owns the app client
        app_client.headers.update(auth(token))
        return client

    monkeypatch.setattr(cli, "ApiClient", in_process)
    outputs = []
    for command in commands:
        result = CliRunner().invoke(cli.cli, ["--token", token, *command])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    return outputs


def test_a_job_whose_workload_waits_in_its_queue_is_queued_with_the_reason_then_running(
    settings, tiny_spec, backend, controller, app_client, tokens, monkeypatch
):
    tiny_spec["resources"]["queue"] = "team-a"
    job_id = submit(settings, tiny_spec)
    controller.reconcile(job_id)
    assert backend.created == [0]

    backend.show(0, Phase.QUEUED, KUEUE_WAITS)
    for _ in range(3):  # every poll sees it waiting; the event is written once
        controller.reconcile(job_id)
    job, events = stored(settings, job_id)
    assert (job.state, job.state_reason) == ("queued", KUEUE_WAITS)
    assert [e for e in events if e[0] == "attempt.queued"] == [
        ("attempt.queued", 0, KUEUE_WAITS, {"reason": KUEUE_WAITS})
    ]

    shown = app_client.get(f"/v1/jobs/{job_id}", headers=auth(tokens["alice"])).json()
    assert (shown["state"], shown["state_reason"]) == ("queued", KUEUE_WAITS)
    listed, got = _pretrainctl(monkeypatch, app_client, tokens["alice"], ["list"], ["get", str(job_id)])
    assert "queued     alice" in listed and KUEUE_WAITS in listed
    assert f"state      queued (desired running): {KUEUE_WAITS}" in got

    backend.show(0, Phase.QUEUED, "waiting for the next preemption round")
    controller.reconcile(job_id)
    job, events = stored(settings, job_id)
    assert (job.state, job.state_reason) == ("queued", "waiting for the next preemption round")
    assert [e[0] for e in events].count("attempt.queued") == 1

    backend.show(0, Phase.RUNNING)
    controller.reconcile(job_id)
    job, events = stored(settings, job_id)
    assert (job.state, job.state_reason, job.attempts[0].state) == ("running", None, "running")
    kinds = [e[0] for e in events]
    assert kinds.index("attempt.queued") < kinds.index("attempt.running")


def test_a_queued_job_can_be_cancelled(settings, tiny_spec, backend, controller):
    job_id = submit(settings, tiny_spec)
    controller.reconcile(job_id)
    backend.show(0, Phase.QUEUED, KUEUE_WAITS)
    controller.reconcile(job_id)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        jobs.cancel_job(session, job_id=job_id, principal=ALICE, reason="not needed")

    for _ in range(2):
        controller.reconcile(job_id)

    job, _ = stored(settings, job_id)
    assert job.state == "cancelled" and backend.deleted == [0]


def test_evictions_restart_from_the_newest_checkpoint_and_spend_no_retry_budget(
    settings, tiny_spec, backend, controller
):
    job_id = submit(settings, tiny_spec)
    evictions = settings.max_pod_failure_retries + 2
    for attempt in range(evictions):
        controller.reconcile(job_id)
        backend.show(attempt, Phase.RUNNING)
        controller.reconcile(job_id)
        with get_sessionmaker(settings.resolved_database_url)() as session:
            save_and_register(session, settings.state_dir / "ckpt", job_id=job_id, attempt=attempt, step=10 * (attempt + 1))
        backend.show(attempt, Phase.FAILED, "node disruption: pod evicted", retryable=True, preempted=True)
        controller.reconcile(job_id)

    job, _ = stored(settings, job_id)
    assert job.state == "pending"
    assert [a.reason for a in job.attempts] == ["launch"] + ["preempted"] * evictions
    assert {a.state for a in job.attempts[:-1]} == {"superseded"}  # none counts as failed
    newest = job.attempts[-1]
    with get_sessionmaker(settings.resolved_database_url)() as session:
        resumed = repo.list_checkpoints(session, job_id=job_id)
        assert {c.id: c.step for c in resumed}[newest.resume_from_checkpoint_id] == 10 * evictions
    assert newest.skip_ranges == []


def test_a_workload_the_queue_takes_back_while_it_runs_counts_as_preempted(
    settings, tiny_spec, backend, controller
):
    job_id = submit(settings, tiny_spec)
    controller.reconcile(job_id)
    backend.show(0, Phase.RUNNING)
    controller.reconcile(job_id)

    backend.show(0, Phase.QUEUED, "Preempted to accommodate a workload (UID: 42) in the ClusterQueue")
    controller.reconcile(job_id)

    job, _ = stored(settings, job_id)
    assert [(a.reason, a.state) for a in job.attempts] == [("launch", "superseded"), ("preempted", "pending")]
    assert "evicted by its queue: Preempted" in job.attempts[0].state_reason


def _stepped(settings, job_id: int, attempt: int, step: int, ago_s: float) -> None:
    """The attempt started a while back and reported `step` `ago_s` seconds ago, nothing since."""
    then = utcnow() - timedelta(seconds=ago_s)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = repo.get_job(session, job_id=job_id)
        job.attempts[attempt].started_at = then - timedelta(seconds=60)
        session.add(MetricPoint(job_id=job_id, attempt=attempt, step=step, name=STEP_METRIC, value=0.1, created_at=then))
        session.merge(LatestMetric(job_id=job_id, name=STEP_METRIC, attempt=attempt, step=step, value=0.1, created_at=then))
        save_and_register(session, settings.state_dir / "ckpt", job_id=job_id, attempt=attempt, step=step)
        session.commit()


@pytest.mark.parametrize("max_stall_restarts", [1, 0])
def test_a_run_that_stops_stepping_is_restarted_from_its_checkpoint_until_the_cap_then_fails(
    settings, tiny_spec, backend, controller, max_stall_restarts
):
    tiny_spec["watchdog"].update(stall_timeout_s=30, max_stall_restarts=max_stall_restarts)
    job_id = submit(settings, tiny_spec)
    controller.reconcile(job_id)
    backend.show(0, Phase.RUNNING)
    controller.reconcile(job_id)
    _stepped(settings, job_id, 0, step=7, ago_s=10)

    backend.watching = True  # as with a live informer, which wakes jobs only on changes...
    again_in = controller.reconcile(job_id)  # 10 s without a step is within 30 s
    assert stored(settings, job_id)[0].state == "running"
    assert again_in <= 20.0  # ...but a stall changes nothing: it looks again by the deadline

    _stepped(settings, job_id, 0, step=8, ago_s=45)
    controller.reconcile(job_id)

    job, events = stored(settings, job_id)
    (stalled,) = [e for e in events if e[0] == "job.stalled"]
    assert stalled[1] == 0 and "NCCL timeout" in stalled[2]
    assert stalled[3]["last_step"] == 8 and stalled[3]["stalled_s"] >= 45
    assert stalled[3]["nccl_timeout"] is True and stalled[3]["pods"] == backend.pods
    if max_stall_restarts:
        assert job.state == "pending"
        assert [(a.reason, a.state) for a in job.attempts] == [("launch", "superseded"), ("stall", "pending")]
        with get_sessionmaker(settings.resolved_database_url)() as session:
            resume = {c.id: c.step for c in repo.list_checkpoints(session, job_id=job_id)}
        assert resume[job.attempts[1].resume_from_checkpoint_id] == 8
        assert job.attempts[1].skip_ranges == []
        controller.reconcile(job_id)  # the hung workload goes, the new one comes
        assert backend.deleted == [0] and backend.created == [0, 1]
    else:
        assert job.state == "failed" and "0 stall restarts spent" in job.state_reason
        assert backend.deleted == [0]


def test_a_queued_job_can_be_paused_and_rolled_back(settings, tiny_spec, backend, controller):
    from service import attempts
    from service.watchdog.rollback import RollbackRequest, roll_back

    oncall = Principal(name="oncall", role=Role.ONCALL)
    job_id = submit(settings, tiny_spec)
    controller.reconcile(job_id)
    backend.show(0, Phase.QUEUED, KUEUE_WAITS)
    controller.reconcile(job_id)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        attempts.pause_job(session, job_id=job_id, principal=oncall, reason="hold")
    for _ in range(2):
        controller.reconcile(job_id)
    job, _ = stored(settings, job_id)
    assert (job.state, job.attempts[0].state, backend.deleted) == ("paused", "cancelled", [0])

    with get_sessionmaker(settings.resolved_database_url)() as session:
        attempts.resume_job(session, job_id=job_id, principal=oncall, reason="go")
    controller.reconcile(job_id)
    backend.show(1, Phase.QUEUED, KUEUE_WAITS)
    controller.reconcile(job_id)
    assert stored(settings, job_id)[0].state == "queued"
    with get_sessionmaker(settings.resolved_database_url)() as session:
        save_and_register(session, settings.state_dir / "ckpt", job_id=job_id, attempt=1, step=4)
        request = RollbackRequest(onset_step=40, reason=AttemptReason.ONCALL, why="bad data", actor="oncall", expected_attempt=1)
        roll_back(session, job_id=job_id, request=request, storage=None, commit=True)
    job, events = stored(settings, job_id)
    assert (job.state, job.attempts[-1].reason) == ("pending", "oncall")
    assert "job.rolled_back" in [e[0] for e in events]


def test_without_a_stall_timeout_in_the_spec_the_job_gets_ten_median_steps_bounded_below(
    settings, tiny_spec, backend, controller
):
    from service.controller import stall

    job_id = submit(settings, tiny_spec)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = repo.get_job(session, job_id=job_id)
        job.attempts[0].started_at = utcnow()
        for step, seconds in enumerate([30.0, 31.0, 29.0, 900.0, 30.0]):  # one slow step (a save)
            session.add(MetricPoint(job_id=job_id, attempt=0, step=step, name=STEP_METRIC, value=seconds))
        session.merge(LatestMetric(job_id=job_id, name=STEP_METRIC, attempt=0, step=4, value=30.0, created_at=utcnow()))
        session.flush()
        progress = stall.measure(session, job, job.attempts[0], floor_s=120.0, startup_s=900.0, grace_s=60.0)
        assert (progress.last_step, progress.timeout_s) == (4, 300.0)
        floored = stall.measure(session, job, job.attempts[0], floor_s=400.0, startup_s=900.0, grace_s=60.0)
        assert floored.timeout_s == 400.0
