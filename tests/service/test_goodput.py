"""The goodput timeline on constructed runs: each category against the timestamps, and the sum
against the wall time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.goodput import (
    CATEGORIES,
    AttemptTimes,
    EventTime,
    SaveTime,
    StepTime,
    goodput,
    kept_limits,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def steps(first: int, count: int, *, first_start: float, duration: float = 1.0) -> list[StepTime]:
    """`count` back-to-back steps from step `first`, the first starting at `first_start` s."""
    return [StepTime(first + i, at(first_start + (i + 1) * duration), duration) for i in range(count)]


def assert_adds_up(result, wall: float) -> None:
    assert set(result.seconds) == set(CATEGORIES)
    assert result.wall_s == pytest.approx(wall)
    assert sum(result.seconds.values()) == pytest.approx(wall, abs=1e-9)
    assert sum(result.fractions.values()) == pytest.approx(1.0)


def test_a_rollback_loses_the_steps_past_the_checkpoint_it_resumed_from():
    # a0: queued [1, 4), steps 0-3 in [10, 14), a save of step 4 in [14, 15), steps 4-7 in
    # [15, 19); rolled back at 21 to step 4. a1: a 2 s load, steps 4-9 in [30, 36). Done at 40.
    attempts = [
        AttemptTimes(0, at(0), at(21), None, steps(0, 4, first_start=10) + steps(4, 4, first_start=15)),
        AttemptTimes(1, at(21), at(38), 4, steps(4, 6, first_start=30), load_s=2.0),
    ]
    events = [EventTime("attempt.queued", 0, at(1)), EventTime("attempt.running", 0, at(4))]
    saves = [SaveTime(0, 4, at(15), 1.0)]

    result = goodput(submitted_at=at(0), finished_at=at(40), now=at(99), attempts=attempts, saves=saves, events=events)

    assert_adds_up(result, 40)
    assert result.seconds["queued"] == pytest.approx(3)  # [1, 4)
    assert result.seconds["startup"] == pytest.approx((10 - 0 - 3) + (28 - 21))  # less queue, less load
    assert result.seconds["checkpoint"] == pytest.approx(1 + 2)
    assert result.seconds["productive"] == pytest.approx((14 - 10) + (36 - 30))
    assert result.seconds["lost"] == pytest.approx(19 - 15)  # steps 4-7 of a0, redone by a1
    assert result.seconds["other"] == pytest.approx((21 - 19) + (40 - 36))
    assert result.seconds["stalled"] == 0
    assert result.lost_steps == 4
    assert result.ratio == pytest.approx(10 / 40)


def test_a_preemption_that_saved_at_its_last_step_loses_nothing():
    # a0 trains steps 0-5 in [5, 11), saves step 6 on SIGTERM in [11, 12); a1 resumes from 6.
    attempts = [
        AttemptTimes(0, at(0), at(13), None, steps(0, 6, first_start=5)),
        AttemptTimes(1, at(13), None, 6, steps(6, 4, first_start=20), load_s=1.0),
    ]
    saves = [SaveTime(0, 6, at(12), 1.0)]

    result = goodput(submitted_at=at(0), finished_at=None, now=at(25), attempts=attempts, saves=saves)

    assert_adds_up(result, 25)  # an active job: up to now
    assert result.seconds["lost"] == 0 and result.lost_steps == 0
    assert result.seconds["productive"] == pytest.approx(6 + 4)
    assert result.seconds["checkpoint"] == pytest.approx(2)
    assert result.seconds["startup"] == pytest.approx(5 + (19 - 13))


def test_a_pod_failure_loses_the_steps_past_the_last_checkpoint():
    # a0: steps 0-9 in [2, 12), checkpoint of step 5 saved at [7, 7.5); the pod dies at 14.
    attempts = [
        AttemptTimes(0, at(0), at(14), None, steps(0, 5, first_start=2) + steps(5, 5, first_start=7.5)),
        AttemptTimes(1, at(14), at(30), 5, steps(5, 5, first_start=20)),
    ]
    saves = [SaveTime(0, 5, at(7.5), 0.5)]

    result = goodput(submitted_at=at(0), finished_at=at(30), now=at(30), attempts=attempts, saves=saves)

    assert_adds_up(result, 30)
    assert result.seconds["productive"] == pytest.approx((7 - 2) + (25 - 20))
    assert result.seconds["lost"] == pytest.approx(12.5 - 7.5)
    assert result.lost_steps == 5


def test_a_stall_runs_from_the_last_step_to_the_verdict():
    # a0: steps 0-3 in [5, 9), then nothing; job.stalled at 20; a1 from scratch (no checkpoint).
    attempts = [
        AttemptTimes(0, at(0), at(21), None, steps(0, 4, first_start=5)),
        AttemptTimes(1, at(21), at(30), None, steps(0, 4, first_start=24)),
    ]
    events = [EventTime("job.stalled", 0, at(20), {"last_step": 3, "stalled_s": 11.0})]

    result = goodput(submitted_at=at(0), finished_at=at(30), now=at(30), attempts=attempts, events=events)

    assert_adds_up(result, 30)
    assert result.seconds["stalled"] == pytest.approx(20 - 9)
    assert result.seconds["lost"] == pytest.approx(9 - 5)  # nothing survived: a1 started afresh
    assert result.seconds["productive"] == pytest.approx(28 - 24)
    assert result.seconds["startup"] == pytest.approx(5 + 3)


def test_a_stall_without_steps_is_measured_by_the_verdicts_own_stalled_s():
    attempts = [AttemptTimes(0, at(0), None, None)]
    events = [EventTime("job.stalled", None, at(10), {"last_step": None, "stalled_s": 4.0})]

    result = goodput(submitted_at=at(0), finished_at=None, now=at(12), attempts=attempts, events=events)

    assert_adds_up(result, 12)
    assert result.seconds["stalled"] == pytest.approx(4)
    assert result.seconds["startup"] == pytest.approx(8)


def test_an_attempt_still_queued_is_queued_until_now_and_no_queued_event_means_no_queue():
    queued = goodput(
        submitted_at=at(0), finished_at=None, now=at(50), attempts=[AttemptTimes(0, at(0), None, None)],
        events=[EventTime("attempt.queued", 0, at(2), {"reason": "quota"})],
    )  # fmt: skip
    assert_adds_up(queued, 50)
    assert queued.seconds["queued"] == pytest.approx(48) and queued.seconds["startup"] == pytest.approx(2)

    unqueued = goodput(submitted_at=at(0), finished_at=None, now=at(50), attempts=[AttemptTimes(0, at(0), None, None)])
    assert unqueued.seconds["queued"] == 0 and unqueued.seconds["startup"] == pytest.approx(50)


def test_checkpoint_saves_are_taken_out_of_the_training_around_them():
    attempts = [AttemptTimes(0, at(0), at(20), None, steps(0, 10, first_start=4, duration=1.5))]  # [4, 19)
    saves = [SaveTime(0, 0, at(4), 1.0), SaveTime(0, 5, at(12), 0.5), SaveTime(0, 10, at(19.25), 0.25)]

    result = goodput(submitted_at=at(0), finished_at=at(20), now=at(20), attempts=attempts, saves=saves)

    assert_adds_up(result, 20)
    assert result.seconds["checkpoint"] == pytest.approx(1.75)
    assert result.seconds["productive"] == pytest.approx(15 - 0.5)
    assert result.seconds["startup"] == pytest.approx(3)
    assert result.seconds["other"] == pytest.approx(20 - 19 - 0.25)


def test_a_later_rollback_to_an_older_checkpoint_throws_away_more_of_an_earlier_attempt():
    shells = [AttemptTimes(0, at(0), None, None), AttemptTimes(1, at(1), None, 40), AttemptTimes(2, at(2), None, 20)]
    assert kept_limits(shells) == {0: 20, 1: 20, 2: None}


def test_a_job_cancelled_before_any_attempt_ran_is_all_startup_and_nothing_is_negative():
    result = goodput(submitted_at=at(0), finished_at=at(3), now=at(9), attempts=[AttemptTimes(0, at(0), at(3), None)])
    assert_adds_up(result, 3)
    assert result.seconds["startup"] == pytest.approx(3)
    assert all(value >= 0 for value in result.seconds.values())
