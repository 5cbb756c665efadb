"""The pure decision: each situation a job can be in, and what the controller does about it."""

from __future__ import annotations

import pytest

from service.controller.outcome import Outcome, TrainerOutcome
from service.controller.reconcile import (
    CreateWorkload,
    DeleteWorkload,
    Desired,
    FinishJob,
    Observed,
    OpenAttempt,
    Phase,
    RecordAttempt,
    RecordQueued,
    RefuseCheckpoint,
    RollBack,
    WorkloadStatus,
    plan,
)


def desired(**overrides) -> Desired:
    values = dict(
        job_id=7,
        state="pending",
        desired_state="running",
        attempt=0,
        attempt_state="pending",
        pod_failure_retries=0,
        max_pod_failure_retries=3,
    )
    return Desired(**{**values, **overrides})


def observed(*statuses: WorkloadStatus) -> Observed:
    return Observed({s.attempt: s for s in statuses})


def workload(
    attempt: int, phase: Phase, reason: str | None = None, retryable: bool = False
) -> WorkloadStatus:
    return WorkloadStatus(
        name=f"job-7-a{attempt}", attempt=attempt, phase=phase, reason=reason, retryable=retryable
    )


def test_a_pending_attempt_without_a_workload_gets_one():
    actions, requeue = plan(desired(), observed())
    assert actions == [CreateWorkload(0)]
    assert requeue is not None


def test_a_created_workload_that_is_not_running_yet_changes_nothing():
    actions, requeue = plan(desired(), observed(workload(0, Phase.PENDING)))
    assert actions == [] and requeue is not None


def test_a_queued_workload_queues_the_job_once_per_reason_and_is_looked_at_again():
    held = observed(workload(0, Phase.QUEUED, reason="no quota"))
    actions, requeue = plan(desired(), held)
    assert actions == [RecordQueued(0, "no quota")] and requeue is not None
    again, requeue = plan(desired(state="queued", queue_reason="no quota"), held)
    assert again == [] and requeue is not None
    reworded, _ = plan(desired(state="queued", queue_reason="no quota"), observed(workload(0, Phase.QUEUED, reason="quota for 8 GPUs")))
    assert reworded == [RecordQueued(0, "quota for 8 GPUs")]
    cancelled, _ = plan(desired(state="queued", desired_state="cancelled"), held)
    assert cancelled == [DeleteWorkload(0, why="the job is cancelled")]


def test_a_running_workload_its_queue_takes_back_is_a_preemption():
    actions, _ = plan(desired(state="running", attempt_state="running"), observed(workload(0, Phase.QUEUED, reason="preempted by a higher priority")))
    assert [type(a) for a in actions] == [RecordAttempt, OpenAttempt]
    assert actions[0].state == "superseded" and actions[1].reason == "preempted"


def test_a_running_workload_marks_the_attempt_running_once():
    actions, _ = plan(desired(), observed(workload(0, Phase.RUNNING)))
    assert actions == [RecordAttempt(0, "running")]
    again, _ = plan(
        desired(state="running", attempt_state="running"), observed(workload(0, Phase.RUNNING))
    )
    assert again == []


def test_success_finishes_the_job_and_stops_looking():
    actions, requeue = plan(
        desired(state="running", attempt_state="running"), observed(workload(0, Phase.SUCCEEDED))
    )
    assert actions == [
        RecordAttempt(0, "succeeded"),
        FinishJob("succeeded", reason="attempt 0 finished training"),
    ]
    assert requeue is None


def test_a_retryable_failure_opens_a_new_attempt():
    state = desired(state="running", attempt_state="running")
    actions, _ = plan(state, observed(workload(0, Phase.FAILED, reason="Evicted", retryable=True)))
    assert actions == [
        RecordAttempt(0, "failed", reason="Evicted"),
        OpenAttempt("pod_failure", why="attempt 0: Evicted"),
    ]


def test_a_permanent_failure_fails_the_job_with_the_reason():
    state = desired(state="running", attempt_state="running")
    actions, _ = plan(state, observed(workload(0, Phase.FAILED, reason="OOMKilled")))
    assert actions == [
        RecordAttempt(0, "failed", reason="OOMKilled"),
        FinishJob("failed", reason="attempt 0: OOMKilled"),
    ]


def test_retryable_failures_stop_at_the_retry_budget():
    state = desired(state="running", attempt=3, attempt_state="running", pod_failure_retries=3)
    actions, _ = plan(state, observed(workload(3, Phase.FAILED, reason="Evicted", retryable=True)))
    assert isinstance(actions[-1], FinishJob) and actions[-1].state == "failed"
    assert "retry budget of 3" in actions[-1].reason


def test_a_running_attempt_whose_workload_vanished_is_retried():
    actions, _ = plan(desired(state="running", attempt_state="running"), observed())
    assert actions[0] == RecordAttempt(0, "failed", reason="its workload disappeared")
    assert isinstance(actions[1], OpenAttempt)


def test_workloads_of_superseded_attempts_are_deleted():
    actions, _ = plan(
        desired(attempt=1), observed(workload(0, Phase.FAILED), workload(1, Phase.PENDING))
    )
    assert actions == [DeleteWorkload(0, why="attempt 0 is superseded")]


def test_a_new_attempt_is_created_while_the_old_workload_goes():
    actions, _ = plan(desired(attempt=1), observed(workload(0, Phase.FAILED)))
    assert actions == [DeleteWorkload(0, why="attempt 0 is superseded"), CreateWorkload(1)]


@pytest.mark.parametrize("target", ["cancelled", "paused"])
def test_cancel_and_pause_delete_the_workload_then_settle_the_job(target):
    running = desired(state="running", desired_state=target, attempt_state="running")
    actions, requeue = plan(running, observed(workload(0, Phase.RUNNING)))
    assert actions == [DeleteWorkload(0, why=f"the job is {target}")] and requeue is not None

    actions, requeue = plan(running, observed())
    assert actions == [
        RecordAttempt(0, "cancelled", reason=f"job {target}"),
        FinishJob(target, reason=f"{target} on request"),
    ]
    assert requeue is None


def test_a_finished_job_is_left_alone_and_a_cancelled_one_keeps_no_workload():
    assert plan(
        desired(state="succeeded", attempt_state="succeeded"),
        observed(workload(0, Phase.SUCCEEDED)),
    ) == ([], None)
    actions, _ = plan(
        desired(state="cancelled", desired_state="cancelled", attempt_state="cancelled"),
        observed(workload(0, Phase.RUNNING)),
    )
    assert actions == [DeleteWorkload(0, why="the job is cancelled")]


def test_plan_is_idempotent_for_every_situation():
    situations = [
        (desired(), observed()),
        (
            desired(state="running", attempt_state="running"),
            observed(workload(0, Phase.FAILED, "Evicted", True)),
        ),
        (desired(desired_state="cancelled"), observed(workload(0, Phase.RUNNING))),
    ]
    for state, seen in situations:
        assert plan(state, seen) == plan(state, seen)


def test_a_workload_that_reports_its_result_succeeds_once_the_result_is_stored():
    actions, requeue = plan(
        desired(state="running", attempt_state="running", awaits_result=False),
        observed(workload(0, Phase.SUCCEEDED)),
    )
    assert actions == [
        RecordAttempt(0, "succeeded"),
        FinishJob("succeeded", reason="attempt 0 finished training"),
    ]
    assert requeue is None


def test_a_workload_that_succeeds_without_its_result_fails_the_job():
    actions, requeue = plan(
        desired(state="running", attempt_state="running", awaits_result=True),
        observed(workload(0, Phase.SUCCEEDED)),
    )
    reason = "the workload exited 0 without reporting its result"
    assert actions == [
        RecordAttempt(0, "failed", reason=reason),
        FinishJob("failed", reason=f"attempt 0: {reason}"),
    ]
    assert requeue is None


def ended(attempt: int, outcome: str, *, step: int | None = None, checkpoint: str | None = None, phase=Phase.FAILED) -> WorkloadStatus:
    told = TrainerOutcome(Outcome(outcome), rank=0, step=step, message="m", checkpoint=checkpoint)
    return WorkloadStatus(
        name=f"job-7-a{attempt}", attempt=attempt, phase=phase, reason=f"the trainer {told.describe()}", outcome=told
    )


def test_the_trainers_outcome_decides_what_follows_a_failed_attempt():
    running = desired(state="running", attempt_state="running", pod_failure_retries=3)  # budget spent
    cases = {
        "diverged": ended(0, "diverged", step=205),
        "corrupt_checkpoint": ended(0, "corrupt_checkpoint", checkpoint="/c/step-00000200"),
        "preempted": ended(0, "preempted", step=210, checkpoint="/c/step-00000210"),
        "bad_config": ended(0, "bad_config"),
        "crashed": ended(0, "crashed", step=7),
    }
    planned = {outcome: plan(running, observed(status))[0] for outcome, status in cases.items()}

    for outcome, actions in planned.items():
        # A preemption is no failure of the attempt: its continuation supersedes it.
        ended_as = "superseded" if outcome == "preempted" else "failed"
        assert actions[0] == RecordAttempt(0, ended_as, reason=cases[outcome].reason, outcome=cases[outcome].outcome)
    assert planned["diverged"][1] == RollBack(0, onset_step=205, why="attempt 0: the trainer diverged at step 205: m")
    assert planned["corrupt_checkpoint"][1] == RefuseCheckpoint(
        0, path="/c/step-00000200", why="attempt 0: the trainer corrupt checkpoint (/c/step-00000200): m"
    )
    # Preempted is not a pod failure: a new attempt although the pod-failure budget is spent.
    assert planned["preempted"][1] == OpenAttempt("preempted", why="attempt 0: the trainer preempted at step 210 (/c/step-00000210): m")
    for outcome in ("bad_config", "crashed"):
        assert planned[outcome][1:] == [FinishJob("failed", reason=f"attempt 0: {cases[outcome].reason}")]


def test_a_success_records_the_trainers_completed_outcome():
    actions, _ = plan(desired(state="running", attempt_state="running"), observed(ended(0, "completed", phase=Phase.SUCCEEDED)))
    assert actions[0].outcome.outcome == Outcome.COMPLETED and actions[0].state == "succeeded"
