"""`pretrainctl demo` for real: the service on the embedded default in its own process, the
real trainer on CPU, a garbage stretch caught, rolled back, and the run finished."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from pretrainctl import demo

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


def short_demo_spec(tmp_path: Path) -> Path:
    """examples/demo.yaml cut to 64 steps on one process, the garbage at steps [24, 32)."""
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["resources"]["gpus_per_node"] = 1
    spec["stages"][0]["tokens"] = 48 * 2048
    spec["stages"][1]["tokens"] = 16 * 2048
    spec["stages"][0]["data"][1]["corrupt_steps"] = [[24, 32]]
    spec["checkpoint"] = {"interval_steps": 8, "keep_last": 4}
    spec["eval"] = {"interval_steps": 16, "samples_per_channel": 8}
    spec["watchdog"].update(recover_window_steps=6, rollback_margin_steps=4, skip_steps_after=12)
    path = tmp_path / "demo-short.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_without_faults_drops_every_injection_and_renames():
    spec = yaml.safe_load(EXAMPLE.read_text())
    clean = demo.without_faults(spec)
    assert clean["name"] == "demo-baseline"
    assert all("corrupt_steps" not in s for stage in clean["stages"] for s in stage["data"])
    assert spec["stages"][0]["data"][1]["corrupt_steps"] == [[60, 76]]  # the original is untouched


@pytest.mark.slow
def test_demo_catches_the_garbage_rolls_back_and_finishes(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAIN_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")  # must not leak in
    lines: list[str] = []
    screen = io.StringIO()

    result = demo.run(
        out_dir=tmp_path / "out", spec_path=short_demo_spec(tmp_path), baseline=False,
        timeout_s=600, echo=lines.append, stream=screen,
    )

    assert result.ok, "\n".join(lines) + screen.getvalue()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["job"]
    assert summary["state"] == "succeeded" and summary["attempts"] == 2
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
