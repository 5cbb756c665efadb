"""`pretrainctl demo` for real: the service on the embedded default in its own process, the
real trainer on CPU, a garbage stretch caught, rolled back, and the run finished."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from pretrainctl import demo
from service.controller.backends import launcher

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


def short_demo_spec(tmp_path: Path) -> Path:
    """examples/demo.yaml cut to 64 steps on one process, the garbage at steps [24, 32), and 8
    benchmark items scored."""
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["resources"]["gpus_per_node"] = 1
    spec["stages"][0]["tokens"] = 48 * 2048
    spec["stages"][1]["tokens"] = 16 * 2048
    spec["stages"][0]["data"][1]["corrupt_steps"] = [[24, 32]]
    spec["checkpoint"] = {"interval_steps": 8, "keep_last": 4}
    spec["eval"] = {"interval_steps": 16, "samples_per_channel": 8}
    spec["watchdog"].update(recover_window_steps=6, rollback_margin_steps=4, skip_steps_after=12)
    spec["evaluation"]["benchmarks"][0]["limit"] = 8  # the runner's fixed cost, and a few items
    path = tmp_path / "demo-short.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_without_faults_drops_every_injection_and_renames():
    spec = yaml.safe_load(EXAMPLE.read_text())
    clean = demo.without_faults(spec)
    assert clean["name"] == "demo-baseline"
    assert all("corrupt_steps" not in s for stage in clean["stages"] for s in stage["data"])
    assert spec["stages"][0]["data"][1]["corrupt_steps"] == [[60, 76]]  # the original is untouched
    assert "evaluation" not in clean and spec["evaluation"]["benchmarks"]  # one benchmark run only


def preempting(follow, state_dir: Path, preempted: list[int], *, attempt: int = 1, after_steps: int = 6):
    """`demo.follow`, while a thread SIGTERMs the trainer of `attempt` once it has trained
    `after_steps` steps, as a node drain would: the trainer saves and exits preempted."""

    def preempt(client, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            steps = [p["step"] for p in client.metrics(job_id, attempt=attempt, name=["loss"])]
            if len(steps) < after_steps:
                continue
            for folder in state_dir.rglob(f"*-{job_id}-a{attempt}"):
                pid = int((folder / launcher.PID_FILE).read_text())
                os.killpg(pid, signal.SIGTERM)  # the launcher's session: the trainer gets it
                preempted.append(max(steps))
                return

    def follow_and_preempt(client, job_id, display, **options):
        stop = threading.Event()
        thread = threading.Thread(target=preempt, args=(client, job_id, stop), daemon=True)
        thread.start()
        try:
            return follow(client, job_id, display, **options)
        finally:
            stop.set()
            thread.join(30)

    return follow_and_preempt


@pytest.mark.slow
def test_demo_catches_the_garbage_rolls_back_and_finishes(tmp_path, monkeypatch):
    """...and, its resumed attempt preempted by a SIGTERM, resumes again from the checkpoint that
    attempt saved; its goodput adds up to the wall time, each category as the timestamps say."""
    monkeypatch.setenv("PRETRAIN_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")  # must not leak in
    lines: list[str] = []
    screen = io.StringIO()
    preempted: list[int] = []
    monkeypatch.setattr(demo, "follow", preempting(demo.follow, tmp_path / "out" / "state", preempted))

    result = demo.run(
        out_dir=tmp_path / "out", spec_path=short_demo_spec(tmp_path), baseline=False,
        timeout_s=600, echo=lines.append, stream=screen,
    )

    assert result.ok, "\n".join(lines) + screen.getvalue()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["job"]
    assert preempted, "the resumed attempt was never preempted"
    assert summary["state"] == "succeeded" and summary["attempts"] == 3
    assert [a["reason"] for a in result.job.job["attempts"]] == ["launch", "rollback", "preempted"]
    assert result.job.job["attempts"][1]["outcome"] == "preempted"
    (rollback,) = summary["rollbacks"]
    assert rollback["actor"] == "watchdog" and rollback["onset_step"] >= 24
    assert rollback["checkpoint_step"] <= 24 - 4
    skip_start, skip_end = rollback["skip_range_batches"]
    assert skip_start == rollback["checkpoint_step"] and skip_end >= 32  # the whole stretch skipped
    assert summary["verdicts"].get("divergence", 0) >= 1
    assert summary["final_loss"] is not None and summary["final_loss"] < 4.0
    shown = screen.getvalue()
    assert "verdict.divergence" in shown and "job.rolled_back" in shown and "job 1 succeeded" in shown
    assert "a1 step" in shown  # the resumed attempt's progress was displayed
    page = (tmp_path / "out" / "report.html").read_text()
    assert "en: garbage injected [24, 32)" in page and "attempt 1" in page
    assert "Data: planned vs consumed per source" in page
    assert any("rollback by watchdog" in line for line in lines)
    assert "Goodput: where the wall time went" in page and "training time: realised vs planned" in page
    assert any(line.strip().startswith("goodput ") and "lost" in line for line in lines)
    assert any(line.strip().startswith("progress: 64/64 steps (100.0%)") for line in lines)
    assert summary["progress"]["steps_done"] == 64 and summary["progress"]["eta_s"] is None
    assert_goodput_matches_the_timestamps(result.job)
    # The final checkpoint, scored after the job by the real lm-eval runner in its own process,
    # stored and served by GET /v1/jobs/{id}/evaluations; the training job stays succeeded.
    (scored,) = result.job.evaluations
    assert (scored["step"], scored["task"], scored["state"]) == (64, "continuation-en", "succeeded"), scored
    assert scored["samples"] == 8 and 0 <= scored["acc"] <= 1 and 0 <= scored["acc_norm"] <= 1
    assert scored["nll"] > 0
    assert "<h2>Benchmarks per checkpoint</h2>" in page and "<td>64</td><td>continuation-en</td><td>succeeded</td>" in page
    assert any(line.strip().startswith("benchmark continuation-en at step 64: acc ") for line in lines)


def _time(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def assert_goodput_matches_the_timestamps(run) -> None:
    """The goodput the API served, against the run's own timestamps: wall time from the job's,
    each attempt's training from the trainer's step times, checkpoint time from its timings."""
    goodput, job = run.goodput, run.job
    seconds = {name: c["seconds"] for name, c in goodput["categories"].items()}
    wall = _time(job["finished_at"]) - _time(job["created_at"])
    assert goodput["wall_s"] == pytest.approx(wall, rel=1e-6)
    assert sum(seconds.values()) == pytest.approx(wall, rel=0.01)
    tolerance = 0.01 * wall

    def by_step(name: str, attempt: int) -> dict[int, float]:
        return dict(run.series(name, attempt))

    attempts = sorted(job["attempts"], key=lambda a: a["number"])
    ends = {a["number"]: by_step("time/step_end_s", a["number"]) for a in attempts}
    durations = {a["number"]: by_step("throughput/step_time_s", a["number"]) for a in attempts}
    saves = {a["number"]: by_step("checkpoint/save_s", a["number"]) for a in attempts}
    loads = {a["number"]: sum(by_step("checkpoint/load_s", a["number"]).values()) for a in attempts}
    # An attempt's work survives up to where the next attempts resumed: their first steps.
    limits, limit = {}, None
    for current, following in zip(attempts[::-1], [None, *attempts[::-1]], strict=False):
        if following is not None:
            first = min(ends[following["number"]])
            limit = first if limit is None else min(limit, first)
        limits[current["number"]] = limit
    expected = dict.fromkeys(seconds, 0.0)
    for attempt in attempts:
        number, steps = attempt["number"], sorted(ends[attempt["number"]])
        first_start = ends[number][steps[0]] - durations[number][steps[0]]
        limit = limits[number]
        kept = [s for s in steps if limit is None or s < limit]
        kept_end = ends[number][kept[-1]]
        # A save of checkpoint k follows step k - 1: inside the span when a step came after it.
        saved_in = [(k, v) for k, v in saves[number].items() if steps[0] < k <= steps[-1]]
        expected["productive"] += kept_end - first_start - sum(v for k, v in saved_in if limit is None or k < limit)
        expected["lost"] += ends[number][steps[-1]] - kept_end - sum(v for k, v in saved_in if limit is not None and k >= limit)
        expected["startup"] += first_start - _time(attempt["created_at"]) - loads[number]
        expected["checkpoint"] += sum(saves[number].values()) + loads[number]
    assert loads[1] > 0 and loads[2] > 0 and expected["lost"] > 0
    for name in ("productive", "lost", "startup", "checkpoint"):
        assert seconds[name] == pytest.approx(expected[name], abs=tolerance), name
    assert seconds["queued"] == 0 and seconds["stalled"] == 0  # no queue here, and no stall
    assert goodput["lost_steps"] > 0 and goodput["planned_training_s"] > 0
    assert goodput["goodput"] == pytest.approx(seconds["productive"] / wall, rel=0.01)


def test_the_live_display_flags_verdicts_and_rollbacks_and_thins_steps_off_a_terminal():
    screen = io.StringIO()
    display = demo.LiveDisplay(screen)
    for step in range(25):
        display.step(0, step, 40, {"loss": 3.0, "loss/en": 3.1, "loss/zh": 4.0})
    display.event({"kind": "verdict.divergence", "attempt": 0, "reason": "divergence on loss/en at step 24: rollback", "data": {}})
    display.event({"kind": "job.rolled_back", "attempt": 1, "reason": "divergence on loss/en from step 20",
                   "data": {"checkpoint": {"step": 10}, "skip_range_batches": [10, 32]}})
    display.event({"kind": "checkpoint.published", "attempt": 0, "reason": None, "data": {"step": 30, "usable": False}})
    display.event({"kind": "token.created", "attempt": None, "reason": None, "data": {}})
    lines = screen.getvalue().splitlines()
    assert [line.split()[2] for line in lines if line.startswith("a0 step")] == ["1/40", "11/40", "21/40"]
    assert ">> a0  verdict.divergence: divergence on loss/en at step 24: rollback" in lines
    assert any(line.startswith(">> a1  job.rolled_back") and "back to step 10, batches [10, 32) skipped" in line for line in lines)
    assert "   a0  checkpoint.published step 30 (unusable: its attempt was superseded)" in lines
    assert not any("token.created" in line for line in lines)
    assert "\r" not in screen.getvalue()  # not a terminal: no rewritten status line
