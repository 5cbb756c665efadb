"""The detector raises exactly the labelled verdicts of synthetic curves, and nothing on noise."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from service.spec import WatchdogSpec
from service.watchdog import Detector, Policy, Verdict
from service.watchdog.replay import main, replay, run_replay
from tests.service.watchdog import curves, labelled

ANOMALIES = [
    "spike",
    "divergence",
    "nonfinite",
    "drop",
    "channel_spike",
    "channel_divergence",
    "ppl_rise",
    "rollback",
]
ACTIONS = {
    "spike": "alert",
    "divergence": "rollback",
    "nonfinite": "rollback",
    "drop": "alert",
    "ppl_rise": "alert",
}


def run(records, detector: Detector | None = None) -> list[Verdict]:
    detector = detector or Detector()
    return [verdict for record in records for verdict in detector.observe(record)]


def assert_exactly_expected(curve: curves.Curve, verdicts: list[Verdict]) -> None:
    _, missed, unexpected = curves.match(curve.expected, verdicts, job=curve.job)
    assert not missed and not unexpected, (curve.name, curve.job, missed, unexpected)


def record(step: int, loss, *, job: str = "j", attempt: int = 0, stage: str = "main") -> dict:
    metrics = {"loss": loss}
    return {
        "job": job,
        "attempt": attempt,
        "step": step,
        "stage": stage,
        "phase": "stable",
        "tokens": step,
        "metrics": metrics,
    }


def flat(steps: range, level: float = 3.0, **kw) -> list[dict]:
    """A flat curve with a small deterministic wiggle."""
    return [record(step, level * (1 + 0.02 * ((step * 7) % 5 - 2) / 2), **kw) for step in steps]


# --- the labelled curves --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ANOMALIES)
@pytest.mark.parametrize("seed", range(8))
def test_each_anomaly_raises_exactly_its_labelled_verdicts(kind: str, seed: int) -> None:
    curve = curves.BUILDERS[kind](seed)
    assert_exactly_expected(curve, run(curve.records))


@pytest.mark.parametrize("kind", ["clean", "clean_channels", "clean_evals", "stage_change"])
def test_noise_warmup_decay_and_stage_changes_raise_nothing_over_50_seeds(kind: str) -> None:
    false_positives = {}
    for seed in range(100, 150):
        verdicts = run(curves.BUILDERS[kind](seed).records)
        if verdicts:
            false_positives[seed] = [(v.kind, v.channel, v.step) for v in verdicts]
    assert false_positives == {}


@pytest.mark.parametrize("kind", ANOMALIES)
def test_duplicates_late_records_and_gaps_keep_the_verdicts(kind: str) -> None:
    for seed in range(4):
        curve = curves.deliver(curves.BUILDERS[kind](seed), seed)
        assert_exactly_expected(curve, run(curve.records))


def test_interleaved_jobs_are_judged_as_if_alone() -> None:
    jobs = [curves.BUILDERS[kind](seed) for seed, kind in enumerate(ANOMALIES + ["clean"])]
    verdicts = run(curves.interleave(jobs, seed=7))
    for curve in jobs:
        mine = [v for v in verdicts if v.job == curve.job]
        assert mine == run(curve.records)
        assert_exactly_expected(curve, mine)


def test_a_verdict_carries_its_action_and_evidence() -> None:
    for kind in ANOMALIES:
        for verdict in run(curves.BUILDERS[kind](3).records):
            assert verdict.action == ACTIONS[verdict.kind]
            assert verdict.evidence["onset"] <= verdict.step
    (spike, divergence) = run(curves.lasting_spike(3).records)
    assert divergence.evidence["onset"] == spike.step
    assert spike.evidence["ratio"] >= 0.15 and spike.evidence["value"] > spike.evidence["trend"]


def test_the_total_barely_moving_leaves_the_verdict_on_the_channel() -> None:
    curve = curves.channel_spike(5)
    assert {v.channel for v in run(curve.records)} == {"zh"}


# --- the definitions, by hand ---------------------------------------------------------------


def test_nothing_is_judged_before_min_history_points() -> None:
    records = flat(range(9)) + [record(9, 30.0)]
    assert run(records) == []
    assert [v.kind for v in run(flat(range(10)) + [record(10, 30.0)])] == ["spike"]


def test_a_spike_back_within_tolerance_is_not_a_divergence() -> None:
    records = flat(range(30)) + [record(30, 4.5)] + flat(range(31, 80))
    assert [(v.kind, v.step) for v in run(records)] == [("spike", 30)]


def test_a_spike_that_stays_diverges_once_when_the_window_runs_out() -> None:
    records = flat(range(30)) + flat(range(30, 200), level=4.5)
    verdicts = run(records)
    assert [(v.kind, v.action, v.step) for v in verdicts] == [
        ("spike", "alert", 30),
        ("divergence", "rollback", 50),
    ]


def test_the_recover_window_comes_from_the_policy() -> None:
    records = flat(range(30)) + flat(range(30, 100), level=4.5)
    verdicts = run(records, Detector(Policy(recover_window_steps=7)))
    assert [(v.kind, v.step) for v in verdicts] == [("spike", 30), ("divergence", 37)]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_nonfinite_loss_rolls_back_at_once_and_once_per_run(value: str) -> None:
    records = flat(range(3)) + [record(3, value), record(4, value)] + flat(range(5, 40))
    records.append(record(40, value))
    verdicts = run(records)
    assert [(v.kind, v.action, v.step) for v in verdicts] == [
        ("nonfinite", "rollback", 3),
        ("nonfinite", "rollback", 40),
    ]


def test_a_drop_alerts_and_a_lasting_one_becomes_the_new_level() -> None:
    records = flat(range(30)) + [record(30, 1.5), record(31, 1.6)] + flat(range(32, 60))
    assert [(v.kind, v.action, v.step) for v in run(records)] == [("drop", "alert", 30)]
    lasting = flat(range(30)) + flat(range(30, 200), level=1.5)
    assert [(v.kind, v.step) for v in run(lasting)] == [("drop", 30)]


def test_a_long_drop_that_comes_back_is_one_alert_never_a_rollback() -> None:
    # The failure the watchdog was known for: a drop held for longer than the recover window
    # became the reference, and the return to the normal level read as a divergence.
    for stretch in (3, 25, 60, 150):
        records = flat(range(60)) + flat(range(60, 60 + stretch), level=1.5)
        records += flat(range(60 + stretch, 400))
        assert [(v.kind, v.step) for v in run(records)] == [("drop", 60)], stretch


def test_a_fall_too_small_for_a_drop_that_comes_back_raises_nothing() -> None:
    # -16% for 50 steps (a channel's bad data moving the total) and back: no verdict either way.
    records = flat(range(60)) + flat(range(60, 110), level=3.0 * 0.84) + flat(range(110, 300))
    assert run(records) == []


def test_a_spike_back_up_within_a_window_of_coming_down_is_the_same_episode() -> None:
    bursts = [record(s, 4.5) for s in range(30, 33)] + flat(range(33, 36))
    bursts += [record(s, 4.6) for s in range(36, 80)]
    verdicts = run(flat(range(30)) + bursts)
    # One alert; the divergence is timed from the first onset, not from the second rise.
    assert [(v.kind, v.step) for v in verdicts] == [("spike", 30), ("divergence", 50)]


def test_a_late_spike_record_is_judged_at_its_own_step_and_not_learned_from() -> None:
    records = flat(range(40)) + flat(range(41, 45))
    late = record(40, 6.0)
    verdicts = run(records + [late] + flat(range(45, 80)))
    assert [(v.kind, v.step, v.evidence.get("late")) for v in verdicts] == [("spike", 40, True)]
    # A record from long before the window says nothing about now.
    assert run(flat(range(200)) + [record(10, 9.0)]) == []


def test_a_creeping_rise_is_a_spike_and_its_divergence_backdates_the_onset() -> None:
    ramp = [record(40 + i, 3.0 * (1 + 0.03 * i)) for i in range(1, 12)]
    held = [record(s, 3.0 * 1.33) for s in range(52, 90)]
    verdicts = run(flat(range(41)) + ramp + held)
    kinds = [v.kind for v in verdicts]
    assert kinds == ["spike", "divergence"]
    spike, divergence = verdicts
    assert divergence.step == spike.step + 20
    assert divergence.evidence["onset"] < spike.step  # the rollback lands before the climb


def test_the_total_sees_a_channel_ramp_against_where_it_was() -> None:
    def rec(step: int, en: float, zh: float) -> dict:
        metrics = {"loss": 0.9 * en + 0.1 * zh, "loss/en": en, "loss/zh": zh}
        return {"job": "j", "attempt": 0, "step": step, "stage": "s", "phase": "stable", "tokens": 0, "metrics": metrics}

    wiggle = [1 + 0.01 * ((s * 7) % 5 - 2) / 2 for s in range(200)]
    records = [rec(s, 3.0 * wiggle[s], 3.0 * wiggle[s]) for s in range(60)]
    # en (90% of the mix) climbs by 3% a step for 12 steps, then stays: the total follows.
    records += [rec(s, 3.0 * (1 + 0.03 * min(s - 59, 12)), 3.0 * wiggle[s]) for s in range(60, 120)]
    verdicts = run(records)
    assert {(v.kind, v.channel) for v in verdicts} == {
        ("spike", "en"), ("divergence", "en"), ("spike", "all"), ("divergence", "all")
    }


def test_a_new_stage_rebaselines() -> None:
    records = flat(range(30)) + flat(range(30, 80), level=4.5, stage="code-heavy")
    assert run(records) == []


def test_a_new_attempt_starts_fresh_and_late_records_of_the_old_one_are_ignored() -> None:
    detector = Detector()
    run(flat(range(30)) + flat(range(30, 60), level=4.5), detector)
    resumed = flat(range(20, 60), level=4.4, attempt=1)
    assert run(resumed[:1] + [record(59, 9.0)] + resumed[1:], detector) == []
    assert detector.counts["stale_attempt"] == 1


def test_duplicates_and_late_records_change_nothing_but_the_counts() -> None:
    curve = curves.transient_spike(2)
    once = Detector()
    twice = Detector()
    expected = run(curve.records, once)
    doubled = [r for pair in zip(curve.records, curve.records, strict=True) for r in pair]
    assert run(doubled, twice) == expected
    assert twice.counts["duplicate"] == len(curve.records)
    assert {**twice.state_dict(), "counts": None} == {**once.state_dict(), "counts": None}
    late = run([record(5, 99.0, job=curve.job)], twice)
    assert late == [] and twice.counts["late"] == 1


def test_ppl_rise_needs_the_others_to_fall() -> None:
    def evals(code: list[float], others: list[float]) -> list[dict]:
        return [
            {
                "job": "j",
                "attempt": 0,
                "step": 20 * i,
                "stage": "s",
                "phase": "eval",
                "tokens": 0,
                "metrics": {"eval/ppl/code": c, "eval/ppl/en": o, "eval/ppl/zh": o * 1.1},
            }
            for i, (c, o) in enumerate(zip(code, others, strict=True))
        ]

    rising = [10.0, 10.5, 11.0, 11.5, 12.0, 12.5]
    falling = [20.0, 19.0, 18.0, 17.0, 16.0, 15.0]
    verdicts = run(evals(rising, falling))
    assert [(v.kind, v.channel, v.step, v.evidence["onset"]) for v in verdicts] == [
        ("ppl_rise", "code", 60, 20)
    ]
    assert run(evals(rising, [x + 10 for x in rising])) == []  # everything rises: no alert


def test_a_per_job_policy_is_looked_up_by_job() -> None:
    records = flat(range(30), job="lax") + [record(30, 4.5, job="lax")]
    records += flat(range(30), job="strict") + [record(30, 4.5, job="strict")]
    policies = {"lax": Policy(spike_threshold=0.6), "strict": Policy()}
    verdicts = run(records, Detector(policies.__getitem__))
    assert [(v.job, v.kind) for v in verdicts] == [("strict", "spike")]


def test_policy_from_a_jobspec_watchdog_section_ignores_unrelated_keys() -> None:
    section = WatchdogSpec(spike_threshold=0.2, recover_window_steps=30).model_dump()
    assert "rollback" in section
    policy = Policy.from_spec(section)
    assert (policy.spike_threshold, policy.recover_window_steps) == (0.2, 30)
    assert Policy.from_spec(WatchdogSpec()) == Policy()
    with pytest.raises(ValueError, match="spike_threshold"):
        Policy(spike_threshold=0)


def test_a_record_without_a_job_or_step_is_refused() -> None:
    with pytest.raises(ValueError, match="no job"):
        Detector().observe({"step": 1, "metrics": {}})
    with pytest.raises(ValueError, match="integer step"):
        Detector().observe({"job": "j", "step": "1", "metrics": {}})


# --- restart --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["divergence", "channel_divergence", "ppl_rise", "rollback", "drop"]
)
def test_a_restart_from_state_mid_stream_resumes_exactly(kind: str) -> None:
    anomaly = curves.BUILDERS[kind](1)
    stream = curves.interleave([anomaly, curves.nonfinite(2), curves.stage_change(3)], seed=1)
    whole = run(stream)
    due = anomaly.expected[0]
    onset = next(
        i for i, r in enumerate(stream) if r["job"] == anomaly.job and r["step"] == due.step
    )
    for cut in (1, len(stream) // 3, onset, onset + 5, len(stream) - 1):  # some inside an episode
        first = Detector()
        before = run(stream[:cut], first)
        state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
        after = run(stream[cut:], Detector.from_state(state))
        assert before + after == whole, cut


def test_state_from_an_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        Detector.from_state({"version": 99})


def test_state_of_the_previous_version_keeps_attempts_and_counts_and_starts_windows_again() -> None:
    old = {
        "version": 1,
        "counts": {"records": 7, "duplicate": 1, "late": 0, "stale_attempt": 0},
        "jobs": {"5": {"attempt": 2, "series": {"loss": {"anything": "old"}}, "ppl": {"last_step": None, "stage": None, "history": [], "alerted": []}}},
    }
    detector = Detector.from_state(old)
    assert detector.counts["records"] == 7
    assert detector.observe(record(3, 3.0, job="5", attempt=1)) == []
    assert detector.counts["stale_attempt"] == 1
    assert detector.state_dict()["jobs"]["5"]["series"] == {}


# --- labelled streams from the definitions (tests/service/watchdog/labelled.py) --------------


def score(streams) -> labelled.Score:
    return labelled.score(streams, lambda: Detector())


def test_streams_in_the_tuned_range_raise_their_labels_and_nothing_else() -> None:
    result = score(labelled.streams(labelled.TUNING_SEEDS[:40]))
    assert not result.false_examples, result.false_examples
    assert result.rate("rollback")["recall"] >= 0.95 and result.rate("alert")["recall"] >= 0.95, (
        result.missed_examples
    )


def test_wider_streams_keep_rollbacks_precise() -> None:
    # Noise to 8%, long drops that come back, ramps, one-channel events, late records: the
    # floor here is below the benchmark's figures (bench/detector.py) and far above what the
    # previous detector scored on such streams (rollback precision 0.58-0.85).
    result = score(labelled.streams(labelled.TUNING_SEEDS[1000:1060], labelled.WIDE))
    rollbacks = result.rate("rollback")
    assert rollbacks["precision"] >= 0.97 and rollbacks["recall"] >= 0.95, result.false_examples
    assert result.rate("alert")["recall"] >= 0.95, result.missed_examples


def test_drops_of_any_length_never_roll_back() -> None:
    drops = labelled.with_ranges(labelled.WIDE, kinds=("drop",), events=(2, 4), drop_steps=(1, 120))
    for stream in labelled.streams(labelled.TUNING_SEEDS[2000:2040], drops):
        detector = Detector()
        verdicts = [v for record in stream.records for v in detector.observe(record)]
        assert not [v for v in verdicts if v.action == "rollback"], (stream.job, stream.events)


def test_tuning_and_scoring_seeds_never_overlap() -> None:
    assert not set(labelled.TUNING_SEEDS) & set(labelled.SCORING_SEEDS)


# --- replay ---------------------------------------------------------------------------------


def test_replay_prints_one_json_line_per_verdict(tmp_path) -> None:
    curve = curves.lasting_spike(4)
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(curve.lines()) + "\n{torn", encoding="utf-8")
    out = io.StringIO()
    assert run_replay(str(path), None, out=out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    onset = curve.expected[0].step
    assert lines == [
        {"job": curve.job, "step": onset, "kind": "spike", "action": "alert", "channel": "all"},
        {
            "job": curve.job,
            "step": onset + 20,
            "kind": "divergence",
            "action": "rollback",
            "channel": "all",
        },
    ]


def test_replay_reads_the_policy_file_and_stdin(tmp_path, monkeypatch, capsys) -> None:
    curve = curves.lasting_spike(4)
    policy = tmp_path / "job.yaml"
    policy.write_text("name: x\nwatchdog:\n  recover_window_steps: 5\n  rollback: alert_only\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(curve.lines())))
    assert main(["-", "--policy", str(policy)]) == 0
    steps = [json.loads(line)["step"] for line in capsys.readouterr().out.splitlines()]
    assert steps == [curve.expected[0].step, curve.expected[0].step + 5]


def test_replay_accepts_batches_and_reports_a_missing_file(tmp_path, capsys) -> None:
    records = curves.nonfinite(1).records
    assert [v["kind"] for v in replay([json.dumps(records[:300]), json.dumps(records[300:])])] == [
        "nonfinite"
    ]
    assert run_replay(str(tmp_path / "absent.jsonl"), None) == 2
    assert "cannot read" in capsys.readouterr().err


def test_the_watchdog_never_imports_the_api() -> None:
    code = (
        "import sys, service.watchdog.replay; "
        "assert not [m for m in sys.modules if m.startswith('service.api')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
