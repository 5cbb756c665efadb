"""The chaos invariants on fabricated jobs: each one holds on a clean job and catches its fault."""

from __future__ import annotations

from tests.chaos.census import Census, Overlap, ResumeCheck, Sighting
from tests.chaos.invariants import (
    JobSeen,
    check,
    duplicate_workloads,
    explained_state,
    metric_records,
    rollback_checkpoints,
    verdicts,
)


def record(attempt: int, step: int, loss: float | str = 2.0) -> dict:
    return {"job": "1", "attempt": attempt, "step": step, "phase": "stable", "metrics": {"loss": loss, "lr": 0.001}}


def stored(*records: dict) -> dict:
    return {(r["attempt"], r["step"], name): value for r in records for name, value in r["metrics"].items()}


def verdict_event(attempt: int, kind: str, channel: str, step: int) -> dict:
    return {"kind": f"verdict.{kind}", "attempt": attempt, "actor": "watchdog", "reason": "x", "data": {"channel": channel, "step": step}}


def rollback_event(attempt: int, judged: int, channel: str, step: int) -> dict:
    return {
        "kind": "job.rolled_back",
        "attempt": attempt,
        "actor": "watchdog",
        "reason": "divergence",
        "data": {"rolled_back_attempt": judged, "evidence": {"channel": channel, "step": step}},
    }


def clean_job() -> JobSeen:
    """A job rolled back once by the watchdog, resumed, finished: every invariant holds."""
    attempt0 = [record(0, s) for s in range(4)]
    attempt1 = [record(1, s) for s in range(2, 6)]
    return JobSeen(
        id=1,
        state="succeeded",
        attempts=[
            {"number": 0, "state": "superseded", "reason": "launch", "outcome": None},
            {"number": 1, "state": "succeeded", "reason": "rollback", "outcome": "completed"},
        ],
        events=[
            verdict_event(0, "divergence", "en", 3),
            rollback_event(1, 0, "en", 3),
            {"kind": "job.succeeded", "attempt": None, "actor": "controller", "reason": "attempt 1 finished", "data": {}},
        ],
        # Attempt 0's last record was never delivered: it was killed. That is no loss.
        points=stored(*attempt0[:3], *attempt1),
        trainer_records={0: attempt0, 1: attempt1},
        replayed_verdicts=[(0, "divergence", "en", 3)],
        launches={0: 1, 1: 1},
    )


def test_a_clean_job_violates_nothing():
    census = Census(
        sightings={(10, "a0"): Sighting(10, 1, 0, "a0", 0, 5), (11, "a1"): Sighting(11, 1, 1, "a1", 5, 9)},
        overlaps=[Overlap(1, (0, 1), older_stopping=True, at_s=5)],
        resume_checks={(1, 1): ResumeCheck(1, 1, "/ckpt/step-2", present=True)},
    )
    assert check([clean_job()], census) == {name: [] for name in check([], census)}


def test_duplicate_workloads_catches_a_second_launch_a_second_process_and_an_unstopped_overlap():
    job = clean_job()
    job.launches[1] = 2
    census = Census(
        sightings={(10, "a1"): Sighting(10, 1, 1, "a1", 0, 5), (11, "a1"): Sighting(11, 1, 1, "a1", 1, 5)},
        overlaps=[Overlap(1, (0, 1), older_stopping=False, at_s=3)],
    )
    assert duplicate_workloads(job, census) == [
        "job 1 attempt 1: its workload was launched 2 times",
        "job 1 attempt 1: 2 trainer processes",
        "job 1: attempts 0, 1 trained at once, the older not asked to stop",
    ]


def test_verdicts_catches_a_duplicate_a_lost_one_an_unfounded_one_and_a_rollback_without_one():
    job = clean_job()
    job.events.insert(0, verdict_event(0, "divergence", "en", 3))  # twice
    job.events.insert(0, verdict_event(1, "spike", "zh", 4))  # the records do not call for it
    job.replayed_verdicts.append((1, "spike", "code", 5))  # called for, never recorded
    job.events.append(rollback_event(2, 1, "all", 5))  # no verdict on attempt 1 at step 5
    assert verdicts(job) == [
        "job 1: verdict divergence on en at step 3 of attempt 0 recorded 2 times",
        "job 1: verdict spike on code at step 5 of attempt 1 lost",
        "job 1: verdict spike on zh at step 4 of attempt 1 recorded, but its records do not call for it",
        "job 1: rollback to attempt 2 has no verdict behind it",
    ]


def test_metric_records_catches_a_gap_a_short_finished_attempt_a_stray_and_a_changed_value():
    job = clean_job()
    del job.points[(0, 1, "loss")]  # a gap before attempt 0's last stored record
    del job.points[(1, 5, "lr")]  # the finished attempt's last record, half lost
    job.points[(1, 9, "loss")] = 1.0  # nobody wrote step 9
    job.points[(1, 2, "loss")] = 2.5  # written as 2.0
    assert metric_records(job) == [
        "job 1 attempt 0: 1 record(s) before a later stored one not stored (steps 1)",
        "job 1 attempt 1: 1 record(s) of the attempt that finished not stored (steps 5)",
        "job 1: 1 stored point(s) no trainer wrote, e.g. (1, 9, 'loss')",
        "job 1: 1 stored point(s) differ from what the trainer wrote, e.g. (1, 2, 'loss'): wrote 2.0, stored 2.5",
    ]


def test_metric_records_compares_non_finite_values_as_the_wire_spells_them():
    job = clean_job()
    nan = record(1, 6, loss="NaN")
    job.trainer_records[1].append(nan)
    job.points.update(stored(nan))
    assert metric_records(job) == []
    job.points[(1, 6, "loss")] = "Infinity"
    assert len(metric_records(job)) == 1


def test_metric_records_wants_the_finished_attempts_file():
    job = clean_job()
    del job.trainer_records[1]
    assert "job 1 attempt 1: finished, but its trainer's metrics file is missing" in metric_records(job)


def test_rollback_checkpoints_catches_a_resume_from_a_missing_checkpoint():
    census = Census(resume_checks={(1, 1): ResumeCheck(1, 1, "/ckpt/step-2", present=False)})
    assert rollback_checkpoints(clean_job(), census) == [
        "job 1 attempt 1: resumed from /ckpt/step-2, which was missing (no manifest) when its trainer started"
    ]


def test_explained_state_catches_a_stuck_job_and_an_end_nobody_explained():
    job = clean_job()
    assert explained_state(job) == []
    job.state = "failed"
    assert explained_state(job) == ["job 1 is failed with no job.failed event saying why"]
    job.state = "pending"
    assert explained_state(job) == [
        "job 1 is stuck pending (last events: verdict.divergence, job.rolled_back, job.succeeded)"
    ]
    job.state = "running"
    assert explained_state(job) == []
