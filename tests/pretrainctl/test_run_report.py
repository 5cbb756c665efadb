"""The run report: figures from a job's stored points and events, drawn as self-contained HTML."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from pretrainctl import run_report
from pretrainctl.run_report import RunData, relative_difference, summarize, svg_chart


def point(attempt: int, step: int, name: str, value: float | None) -> dict:
    return {"attempt": attempt, "step": step, "name": name, "value": value, "nonfinite": None if value is not None else "NaN", "stage": "pretrain", "phase": "train", "tokens": step * 10}


def event(id_: int, kind: str, attempt: int | None, reason: str | None = None, actor: str = "watchdog", **data) -> dict:
    return {"id": id_, "job_id": 7, "attempt": attempt, "kind": kind, "actor": actor, "reason": reason, "data": data, "created_at": f"2026-11-29T10:00:{id_:02d}Z"}


@pytest.fixture
def rolled_back_run() -> RunData:
    """Attempt 0 trains to step 30 and goes bad on `en` from 20; attempt 1 resumes at 10 and ends at 40."""
    points = []
    for step in range(30):
        en = 9.0 if 20 <= step < 26 else 3.0 - step * 0.01
        points += [point(0, step, "loss", (en + 2.0) / 2), point(0, step, "loss/en", en), point(0, step, "loss/code", 2.0)]
    for step in range(10, 40):
        points += [point(1, step, "loss", 2.5 - step * 0.01), point(1, step, "loss/en", 3.0 - step * 0.01), point(1, step, "loss/code", 2.0)]
    points += [point(1, 39, "eval/loss", 2.25), point(1, 39, "eval/ppl/en", 12.0), point(1, 39, "eval/ppl/code", 7.0), point(0, 19, "eval/ppl/en", 20.0)]
    points.append(point(0, 28, "loss/en", None))  # a non-finite point is stored without a value
    job = {
        "id": 7, "name": "demo", "state": "succeeded", "plan": {"params": {"total": 1000, "non_embedding": 600}},
        "derived": {"stages": [{"stage": "pretrain", "train_iters": 40, "seq_length": 128, "tokens_trained": 81920}]},
        "warnings": [{"loc": ["stages", 0, "data", 0, "corrupt_steps"], "msg": "on purpose"}],
        "spec": {"stages": [{"data": [
            {"channel": "en", "path": "embedded://en", "weight": 0.5, "corrupt_steps": [[20, 26]]},
            {"channel": "code", "path": "embedded://code", "weight": 0.5},
        ]}]},
        "attempts": [{"number": 0}, {"number": 1}],
    }
    events = [
        event(1, "job.submitted", 0, actor="alice"),
        event(2, "verdict.spike", 0, "spike on loss/en at step 20: alert"),
        event(3, "verdict.divergence", 0, "divergence on loss/en at step 24: <rollback>"),
        event(4, "job.rolled_back", 1, "divergence on loss/en from step 20", onset_step=20, checkpoint={"id": 1, "step": 10, "path": "/c/10"}, skip_range_batches=[10, 30]),
        event(5, "job.succeeded", None, "attempt 1 finished training", actor="controller"),
    ]
    return RunData(job=job, events=events, points=points)


def test_summary_reads_the_last_attempt_and_the_rollback(rolled_back_run):
    summary = summarize(rolled_back_run)
    assert summary.attempts == 2 and summary.state == "succeeded"
    assert summary.final_loss == pytest.approx(sum(2.5 - s * 0.01 for s in range(30, 40)) / 10)
    assert summary.final_eval_loss == 2.25
    assert summary.final_eval_ppl == {"en": 12.0, "code": 7.0}
    assert summary.verdicts == {"spike": 1, "divergence": 1}
    (rollback,) = summary.rollbacks
    assert rollback == {"attempt": 1, "actor": "watchdog", "why": "divergence on loss/en from step 20", "onset_step": 20, "checkpoint_step": 10, "skip_range_batches": [10, 30]}


def test_relative_difference_is_signed_and_undefined_without_a_reference():
    assert relative_difference(2.2, 2.0) == pytest.approx(0.1)
    assert relative_difference(1.8, 2.0) == pytest.approx(-0.1)
    assert relative_difference(None, 2.0) is None and relative_difference(2.0, 0.0) is None


def test_report_draws_every_attempt_per_channel_with_the_rollback_and_the_fault_marked(rolled_back_run):
    clean_job = {**rolled_back_run.job, "id": 8, "attempts": [{"number": 0}]}
    baseline = RunData(job=clean_job, events=[], points=[p for p in rolled_back_run.points if p["attempt"] == 0])
    page = run_report.render_html(rolled_back_run, baseline=baseline)
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 1 + 2 + 2  # loss, loss per channel (en, code), eval PPL per channel
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    en_loss = svgs[1]
    assert en_loss.count("<polyline") == 3  # the baseline and both attempts
    assert "a1: onset 20" in en_loss and "a1: resumed from 10" in en_loss
    assert "en: garbage injected [20, 26)" in en_loss
    assert "garbage injected" not in svgs[2]  # the code channel had no fault
    assert "batches [10, 30) skipped" in page
    assert "job.rolled_back" in page and "on purpose" in page


def test_event_reasons_are_escaped_not_interpreted(rolled_back_run):
    rolled_back_run.events.append(event(6, "job.cancelled", None, "<script>alert(1)</script>", actor="bob"))
    page = run_report.render_html(rolled_back_run)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;rollback&gt;" in page


def test_a_chart_leaves_out_non_finite_points_and_a_log_axis_leaves_out_non_positive_ones():
    series = [run_report.Series("a", [(0, 1.0), (1, math.nan), (2, 100.0), (3, 0.0)], "#000")]
    svg = svg_chart(series, title="t", y_label="y", log_y=True)
    (polyline,) = re.findall(r'points="([^"]+)"', svg)
    assert len(polyline.split()) == 2
    labels = re.findall(r'text-anchor="end">([^<]+)<', svg)
    assert {"1", "2", "5", "10", "20", "50", "100"} >= set(labels) >= {"1", "10", "100"}
    linear = svg_chart(series, title="t", y_label="y")
    (polyline,) = re.findall(r'points="([^"]+)"', linear)
    assert len(polyline.split()) == 3


def test_a_chart_without_points_says_so():
    assert "no data" in svg_chart([run_report.Series("a", [], "#000")], title="t", y_label="y")


def test_report_shows_planned_against_consumed_mix_per_source(rolled_back_run):
    rolled_back_run.data = {
        "job_id": 7, "attempt": 1, "step": 39, "tokens_planned": 81920, "tokens_expected": 81920, "tokens_consumed": 81000,
        "channels": [
            {"channel": "en", "paths": ["embedded://en"], "tokens_planned": 40960, "tokens_expected": 40960, "tokens_consumed": 41500,
             "share_planned": 0.5, "share_consumed": 41500 / 81000, "size_tokens": 466196, "epochs_consumed": 41500 / 466196},
            {"channel": "code", "paths": ["embedded://code"], "tokens_planned": 40960, "tokens_expected": 40960, "tokens_consumed": 39500,
             "share_planned": 0.5, "share_consumed": 39500 / 81000, "size_tokens": None, "epochs_consumed": None},
        ],
        "plan": {"sources": [{"path": "embedded://en", "channels": ["en"], "tokens_planned": 40960, "size_tokens": 466196,
                              "epochs": 0.0879, "over_limit": False}]},
    }  # fmt: skip
    assert summarize(rolled_back_run).data_mix == {
        "en": {"planned": 0.5, "consumed": 41500 / 81000}, "code": {"planned": 0.5, "consumed": 39500 / 81000}
    }
    page = run_report.render_html(rolled_back_run)
    section = page.split("<h2>Data: planned vs consumed per source by step 39 (attempt 1)</h2>")[1].split("<h2>")[0]
    assert "<td>en</td><td>40,960</td><td>40,960</td><td>41,500</td><td>50.0%</td><td>51.2%</td><td>0.089</td>" in section
    assert "<td>code</td>" in section and "embedded://en: 466,196 tokens, 0.088 epochs planned" in section


def test_report_without_data_accounting_leaves_the_section_out(rolled_back_run):
    assert "planned vs consumed" not in run_report.render_html(rolled_back_run)
    assert summarize(rolled_back_run).data_mix == {}


def test_report_shows_accuracy_and_nll_per_task_per_step_and_why_one_failed(rolled_back_run):
    def scored(step: int, task: str, acc: float, nll: float) -> dict:
        return {"step": step, "task": task, "state": "succeeded", "acc": acc, "acc_norm": acc / 2, "nll": nll,
                "samples": 32, "error": None}  # fmt: skip

    rolled_back_run.evaluations = [
        scored(20, "continuation-en", 0.25, 3.5),
        scored(40, "continuation-en", 0.5, 2.75),
        {"step": 40, "task": "arc-mini", "state": "failed", "acc": None, "acc_norm": None, "nll": None,
         "samples": None, "error": "the evaluation exited with code 1: <no tokenizer>"},  # fmt: skip
    ]
    page = run_report.render_html(rolled_back_run)
    section = page.split("<h2>Benchmarks per checkpoint</h2>")[1].split("<h2>")[0]
    assert "benchmark accuracy (acc) vs step" in section and "<polyline" in section
    assert "<td>40</td><td>continuation-en</td><td>succeeded</td><td>0.500</td><td>0.250</td><td>2.750</td><td>32</td>" in section
    assert "&lt;no tokenizer&gt;" in section  # the reason, escaped


def test_report_without_evaluations_leaves_the_section_out(rolled_back_run):
    assert "Benchmarks per checkpoint" not in run_report.render_html(rolled_back_run)
